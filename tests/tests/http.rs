//! HTTP routes over real TCP: Python's http.server behind the agent, curl as the client.
//! What a refused client sees, and that no connection is left behind on the server.

use std::{
    io::Read as _,
    net::{Ipv4Addr, TcpListener},
    process::Command,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use portcullis_tests::{
    agent::{Agent, Leftovers},
    netns::{CLIENT_V4, NetnsPair, SERVER_V4, in_ns},
    require_kernel,
    traffic::{Answer, HttpServer, KeepAlive, http_request, send_raw_frame},
};

const POLICY: &str = r#"
http:
  ports: [8080]
  routes:
    - {name: login, methods: [POST], path: /api/login, rate: 1/m, burst: 2}
    - {name: hidden, path: /admin, deny: true}
"#;

/// What curl reported for one request from the client namespace: its exit code (0, or 56
/// for a connection reset), the HTTP status (0 without one), and how long it took.
struct Seen {
    exit: i32,
    status: u16,
    took: Duration,
}

fn curl(pair: &NetnsPair, method: &str, path: &str) -> Seen {
    curl_from(pair, CLIENT_V4, method, path, None)
}

/// One request from address `from` of the client namespace, with `form` as its body.
fn curl_from(pair: &NetnsPair, from: &str, method: &str, path: &str, form: Option<&str>) -> Seen {
    let started = Instant::now();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.client_ns))
        .args([
            "curl",
            "--silent",
            "--output",
            "/dev/null",
            "--max-time",
            "3",
            "--interface",
            from,
        ])
        .args(["--write-out", "%{http_code}", "--request", method])
        .args(form.map(|form| ["--data", form]).into_iter().flatten())
        .arg(format!("http://{SERVER_V4}:8080{path}"))
        .output()
        .expect("running curl");
    Seen {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        took: started.elapsed(),
    }
}

/// A login to the login app from address `from` of the client namespace.
fn login(pair: &NetnsPair, from: &str, password: &str) -> Seen {
    curl_from(
        pair,
        from,
        "POST",
        "/api/login",
        Some(&format!("user=admin&password={password}")),
    )
}

/// Established TCP connections on the server's port 8080, as `ss` lists them.
fn server_connections(pair: &NetnsPair) -> usize {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.server_ns))
        .args(["ss", "-Htn", "state", "established", "( sport = :8080 )"])
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// What each test here runs: a namespace pair (with `clients`, addresses added to the
/// client side), the agent with `policy` on the server side, and an HTTP server on port
/// 8080. Dropped in this order: the server, the agent, the rest.
struct Site {
    _server: HttpServer,
    agent: Agent,
    _dir: tempfile::TempDir,
    _leftovers: Leftovers,
    pair: NetnsPair,
}

/// The server a `Site` runs.
enum App {
    /// Python's http.server (POST answers 501).
    Files,
    /// `tests/apps/login_app.py`.
    Login,
}

impl Site {
    fn new(policy: &str, clients: &[&str], app: App) -> Self {
        Self::new_on(policy, clients, app, "0.0.0.0")
    }

    /// As `new`, with the server listening on `listen` only.
    fn new_on(policy: &str, clients: &[&str], app: App, listen: &str) -> Self {
        let pair = NetnsPair::new().unwrap();
        let leftovers = Leftovers::of(&pair.server_ns);
        for client in clients {
            pair.add_client_addr(client).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, policy).unwrap();
        let agent = Agent::start(&pair.server_ns, &pair.server_if, &path, &[]).unwrap();
        let server = match app {
            App::Files => HttpServer::start(&pair, listen, 8080),
            App::Login => HttpServer::start_login_app(&pair, listen, 8080),
        }
        .unwrap();
        Self {
            _server: server,
            agent,
            _dir: dir,
            _leftovers: leftovers,
            pair,
        }
    }

    /// Waits up to 2 s for the server's connections to close; how many are left.
    fn connections_left(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(2);
        while server_connections(&self.pair) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        server_connections(&self.pair)
    }
}

#[test]
fn refused_requests_reset_their_connection_and_leave_no_socket_behind() {
    require_kernel!();
    let site = Site::new(POLICY, &[], App::Files);
    let (pair, agent) = (&site.pair, &site.agent);

    let page = curl(pair, "GET", "/");
    assert_eq!((page.exit, page.status), (0, 200), "an unrouted page");

    // A denied route: curl sees the connection reset at once, not a hang.
    let admin = curl(pair, "GET", "/admin/users");
    println!(
        "GET /admin/users: curl exit {} (56: connection reset), status {}, after {:?}",
        admin.exit, admin.status, admin.took
    );
    assert_eq!(
        (admin.exit, admin.status),
        (56, 0),
        "/admin refused by a reset"
    );
    assert!(admin.took < Duration::from_secs(1), "took {:?}", admin.took);

    // The login route lets its burst through (http.server answers POST with 501), then
    // refuses the same client, which keeps every other route.
    for n in 1..=2 {
        let login = curl(pair, "POST", "/api/login");
        assert_eq!(
            (login.exit, login.status),
            (0, 501),
            "login {n} within the burst"
        );
    }
    let over = curl(pair, "POST", "/api/login");
    println!(
        "POST /api/login over its rate: curl exit {}, status {}, after {:?}",
        over.exit, over.status, over.took
    );
    assert_eq!((over.exit, over.status), (56, 0), "login over its rate");
    assert!(over.took < Duration::from_secs(1), "took {:?}", over.took);
    let other = curl(pair, "GET", "/api/items");
    assert_eq!(
        (other.exit, other.status),
        (0, 404),
        "another route, same client"
    );

    // Every refused connection was freed on the server too.
    assert_eq!(site.connections_left(), 0, "connections left on the server");

    let stats: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["stats", "--json"]).stdout).unwrap();
    // Each refused request is counted twice: the segment that reset the server's side, and
    // its one retransmission, passed on bare for the server to answer with its RST.
    assert_eq!(stats["verdicts"]["route_denied"], 2, "{stats}");
    assert_eq!(stats["verdicts"]["route_limited"], 2, "{stats}");
    assert_eq!(stats["rules"]["login"]["passed"], 2, "{stats}");

    // Each refusal is an event naming the route, with the request's method and target.
    let deadline = Instant::now() + Duration::from_secs(3);
    let refused = loop {
        let refused: Vec<_> = agent
            .json_lines("event")
            .into_iter()
            .filter(|e| e["action"] == "reset")
            .collect();
        if refused.len() >= 4 || Instant::now() > deadline {
            break refused;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refused.iter().any(|e| e["rule"] == "hidden"
            && e["reason"] == "route_denied"
            && e["method"] == "GET"
            && e["target"] == "/admin/users"
            && e["verdict"] == "reset"),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|e| e["rule"] == "login"
            && e["reason"] == "route_limited"
            && e["method"] == "POST"
            && e["target"] == "/api/login"),
        "{refused:?}"
    );
}

const RESPONSE_POLICY: &str = r#"
http:
  ports: [8080]
  responses:
    - {name: auth-failures, status: [401], ban: {after: 5, within: 1m, for: 10m}}
"#;

/// A client guessing passwords is banned by the kernel from the server's own 401s: after
/// five, on new connections (its SYNs dropped) and on a keep-alive connection (its next
/// request reset), with every 401 counted per response, while another client, on the same
/// link, keeps logging in and reading. The ban is an event and is in `portcullis bans`.
#[test]
fn wrong_passwords_ban_the_client_from_its_401s() {
    require_kernel!();
    let site = Site::new(RESPONSE_POLICY, &["10.77.0.3", "10.77.0.4"], App::Login);
    let (pair, agent) = (&site.pair, &site.agent);
    let login = |from: &str, password: &str| login(pair, from, password);

    // New connections: five 401s, then the sixth attempt cannot connect.
    let guesser = "10.77.0.3";
    for n in 1..=5 {
        let seen = login(guesser, "guess");
        assert_eq!((seen.exit, seen.status), (0, 401), "wrong password {n}");
    }
    let banned = login(guesser, "guess");
    println!(
        "after five 401s: curl exit {} (28: timed out), status {}, after {:?}",
        banned.exit, banned.status, banned.took
    );
    assert_eq!((banned.exit, banned.status), (28, 0), "banned guesser");
    let right = login(guesser, "right");
    assert_eq!(right.status, 0, "the ban holds whatever the password");

    // Another client on the same link is untouched.
    assert_eq!(login(CLIENT_V4, "right").status, 200);
    assert_eq!(login(CLIENT_V4, "guess").status, 401, "one 401 bans no one");
    assert_eq!(curl(pair, "GET", "/api/items").status, 200);

    // One keep-alive connection: each response is counted, and the request after the
    // fifth 401 has its connection reset.
    let mut connection =
        KeepAlive::connect(pair, "10.77.0.4", SERVER_V4, 8080, Duration::from_secs(2));
    let seen: Vec<Answer> = (0..7)
        .map(|_| connection.request("POST", "/api/login", Some("user=admin&password=guess")))
        .collect();
    println!("keep-alive guesses: {seen:?}");
    let mut want = vec![Answer::Status(401); 5];
    want.extend([Answer::Reset, Answer::Nothing]);
    assert_eq!(seen, want);
    assert_eq!(site.connections_left(), 0, "connections left on the server");

    let stats: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["rules"]["auth-failures"]["responses"], 11, "{stats}");
    let bans = String::from_utf8_lossy(&agent.cli(&["bans"]).stdout).into_owned();
    for guesser in ["10.77.0.3/32", "10.77.0.4/32"] {
        assert!(bans.contains(guesser), "{guesser} not in:\n{bans}");
    }
    assert!(!bans.contains(CLIENT_V4), "{bans}");
    let deadline = Instant::now() + Duration::from_secs(3);
    let ban_events = loop {
        let events: Vec<_> = agent
            .json_lines("event")
            .into_iter()
            .filter(|e| e["action"] == "ban" && e["rule"] == "auth-failures")
            .collect();
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let sources: Vec<&str> = ban_events
        .iter()
        .filter_map(|e| e["source"].as_str())
        .collect();
    assert!(
        sources.contains(&"10.77.0.3") && sources.contains(&"10.77.0.4"),
        "{ban_events:?}"
    );
}

const EVASION_POLICY: &str = r#"
http:
  ports: [8080]
  routes:
    - {name: hidden, path: /admin, deny: true}
"#;

/// The evasion shapes over real connections to a real server (`strict` by default): each
/// shape that could reach `/admin` past the route is reset; ordinary requests are served;
/// a request pipelined behind an ordinary one is served too, as the README says (out of
/// sight); and no connection is left on the server.
#[test]
fn evasion_shapes_over_real_connections() {
    require_kernel!();
    let site = Site::new(EVASION_POLICY, &[], App::Login);
    let (pair, agent) = (&site.pair, &site.agent);
    let send = |parts: &[&[u8]]| {
        KeepAlive::connect(pair, CLIENT_V4, SERVER_V4, 8080, Duration::from_secs(2)).send(parts)
    };
    let end = b" HTTP/1.1\r\nHost: api\r\n\r\n";
    let request = |target: &str| [format!("GET {target}").as_bytes(), end].concat();
    for target in [
        "/admin",
        "//admin",
        "/./admin",
        "/public/../admin",
        "/%61dmin",
        "/%2e%2E/admin",
        "/public%2F..%2Fadmin",
        "http://api/admin",
    ] {
        assert_eq!(send(&[&request(target)]), Answer::Reset, "GET {target}");
    }
    assert_eq!(
        send(&[b"GET /adm", b"in HTTP/1.1\r\nHost: api\r\n\r\n"]),
        Answer::Reset,
        "a request line split over two segments"
    );
    assert_eq!(
        send(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]),
        Answer::Reset,
        "the HTTP/2 cleartext preface"
    );
    assert_eq!(send(&[&request("/api/items")]), Answer::Status(200));
    assert_eq!(
        send(&[&request("/a%20b")]),
        Answer::Status(404),
        "an ordinary encoding"
    );
    let pipelined = [request("/api/items"), request("/admin")].concat();
    assert_eq!(
        send(&[&pipelined]),
        Answer::Status(200),
        "the first of two pipelined requests is answered (the second is out of sight)"
    );

    assert_eq!(site.connections_left(), 0, "connections left on the server");
    let stats: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["stats", "--json"]).stdout).unwrap();
    // A refusal counts twice, the segment and its retransmission passed on bare, but for
    // the split request line: its second segment, not a retransmission, meets the server's
    // RST before the first is sent again.
    assert_eq!(stats["verdicts"]["http_evasion"], 2 * 8 + 1, "{stats}");
    assert_eq!(stats["verdicts"]["route_denied"], 2, "{stats}");
}

const OVER_LIMIT_POLICY: &str = r#"
http:
  ports: [8080]
  routes:
    - {name: login, methods: [POST], path: /api/login, rate: 1/s, burst: 1}
    - {name: items, methods: [GET], path: /api/items, rate: 1/s, burst: 1, over_limit: drop}
"#;

/// What curl sees of a request over its route's rate, with each `over_limit`: `reset`
/// (the default) answers at once with a reset; `drop` holds the request back until the
/// route has a token, then the server answers it, as NGINX's `limit_req` without `nodelay`
/// would. Either way no connection is left on the server.
#[test]
fn over_limit_reset_or_drop_as_curl_sees_them() {
    require_kernel!();
    let site = Site::new(OVER_LIMIT_POLICY, &[], App::Login);
    let pair = &site.pair;
    let form = Some("user=a&password=b");

    let first = curl_from(pair, CLIENT_V4, "POST", "/api/login", form);
    assert_eq!((first.exit, first.status), (0, 401));
    let over = curl_from(pair, CLIENT_V4, "POST", "/api/login", form);
    println!(
        "over_limit: reset: curl exit {} (56: reset), status {}, after {:?}",
        over.exit, over.status, over.took
    );
    assert_eq!((over.exit, over.status), (56, 0), "reset");
    assert!(over.took < Duration::from_secs(1), "{:?}", over.took);

    let first = curl(pair, "GET", "/api/items");
    assert_eq!((first.exit, first.status), (0, 200));
    let over = curl(pair, "GET", "/api/items");
    println!(
        "over_limit: drop: curl exit {}, status {}, after {:?}",
        over.exit, over.status, over.took
    );
    // Its segment is dropped until a token comes (1 s), then one of TCP's retransmissions
    // (after 0.2, 0.6, 1.4 s...) gets through and the server answers it.
    assert_eq!((over.exit, over.status), (0, 200), "served late");
    assert!(
        over.took > Duration::from_millis(800) && over.took < Duration::from_millis(2900),
        "{:?}",
        over.took
    );

    assert_eq!(site.connections_left(), 0, "connections left on the server");
}

const LOGIN_AND_ITEMS: &str = r#"
allow: [10.77.0.5]
http:
  ports: [8080]
  routes:
    - {name: login, methods: [POST], path: /api/login, rate: 2/s, burst: 2}
    - {name: hidden, path: /admin, deny: true}
"#;

/// For 3 s one client alternates logins and reads, each on a new connection: the logins are
/// cut to the route's rate, the reads all served. An allow-listed address is never limited
/// and is served /admin, which an outsider is refused.
#[test]
fn the_login_is_cut_to_its_rate_while_other_routes_and_allowed_sources_keep_going() {
    require_kernel!();
    let site = Site::new(LOGIN_AND_ITEMS, &["10.77.0.5"], App::Login);
    let pair = &site.pair;
    let ask = |from: &str, request: (&str, &str, Option<&str>)| {
        http_request(pair, from, SERVER_V4, 8080, request, Duration::from_secs(2))
    };
    let login = ("POST", "/api/login", Some("user=a&password=b"));
    let items = ("GET", "/api/items", None);

    let started = Instant::now();
    let (mut logins, mut logins_served, mut reads, mut reads_served) = (0, 0, 0, 0);
    while started.elapsed() < Duration::from_secs(3) {
        logins += 1;
        if ask(CLIENT_V4, login) == Answer::Status(401) {
            logins_served += 1;
        }
        reads += 1;
        if ask(CLIENT_V4, items) == Answer::Status(200) {
            reads_served += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{elapsed:.1} s: {logins_served} of {logins} logins served, {reads_served} of {reads} reads"
    );
    assert_eq!(reads_served, reads, "every read served");
    let allowed = 2.0 + 2.0 * elapsed;
    assert!(
        f64::from(logins_served) <= allowed + 1.0,
        "{logins_served} logins served, the route allows {allowed:.1}"
    );
    assert!(
        f64::from(logins_served) >= 2.0 * elapsed - 1.0 && logins_served < logins,
        "{logins_served} of {logins} logins served in {elapsed:.1} s"
    );

    let monitor = "10.77.0.5";
    for n in 0..10 {
        assert_eq!(
            ask(monitor, login),
            Answer::Status(401),
            "allowed login {n}"
        );
    }
    assert_eq!(
        ask(monitor, ("GET", "/admin", None)),
        Answer::Status(404),
        "/admin reaches the application for the allow list"
    );
    assert_eq!(ask(CLIENT_V4, ("GET", "/admin", None)), Answer::Reset);
}

/// A local process (any pod on the node) bound to the HTTP port's number, on an address of
/// the node the server does not listen on, connects to a bystander and writes 401s at it: what leaves is no
/// response of the server's (no SYN-ACK opened that connection), so the bystander is not
/// banned, and logs in; the server's own 401s to a guesser still ban the guesser.
#[test]
fn a_local_process_writing_401s_from_the_http_port_bans_nobody() {
    require_kernel!();
    let framer_addr = "10.77.0.5";
    let site = Site::new_on(RESPONSE_POLICY, &["10.77.0.3"], App::Login, SERVER_V4);
    let pair = &site.pair;
    in_ns(
        &pair.server_ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{framer_addr}/24"),
            "dev",
            &pair.server_if,
        ],
    )
    .unwrap();
    let listener = pair
        .client(|| TcpListener::bind((CLIENT_V4, 9100)))
        .unwrap();
    let bystander = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut heard = Vec::new();
        stream.read_to_end(&mut heard).unwrap();
        heard
    });
    // Twenty 401s, each its own segment.
    let script = format!(
        "import socket, time\n\
         s = socket.socket()\n\
         s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
         s.bind(('{framer_addr}', 8080))\n\
         s.connect(('{CLIENT_V4}', 9100))\n\
         for _ in range(20):\n    \
             s.send(b'HTTP/1.1 401 Unauthorized\\r\\nContent-Length: 0\\r\\n\\r\\n')\n    \
             time.sleep(0.02)\n\
         s.close()\n"
    );
    in_ns(&pair.server_ns, &["python3", "-c", &script]).unwrap();
    let heard = String::from_utf8(bystander.join().unwrap()).unwrap();
    assert_eq!(heard.matches("HTTP/1.1 401").count(), 20, "{heard}");

    let login = |from: &str, password: &str| login(pair, from, password);
    assert_eq!(
        login(CLIENT_V4, "right").status,
        200,
        "the bystander logs in"
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&site.agent.cli(&["stats", "--json"]).stdout).unwrap();
    let counted = stats["rules"]["auth-failures"]["responses"].as_u64();
    assert_eq!(counted.unwrap_or(0), 0, "{stats}");
    let bans = String::from_utf8_lossy(&site.agent.cli(&["bans"]).stdout).into_owned();
    assert!(!bans.contains(CLIENT_V4), "{bans}");

    // The server's own 401s still count: the guesser is banned after five.
    for n in 1..=5 {
        assert_eq!(
            login("10.77.0.3", "guess").status,
            401,
            "wrong password {n}"
        );
    }
    assert_eq!(
        login("10.77.0.3", "guess").exit,
        28,
        "the guesser is banned"
    );
}

/// Request segments spoofed with a bystander's address, with no handshake behind them
/// (as from an off-path attacker, who never sees the server's SYN-ACK), charge the
/// bystander's bucket nothing: after forty of them, its own two logins (the route's burst)
/// pass.
#[test]
fn spoofed_requests_cost_the_bystander_nothing() {
    require_kernel!();
    let site = Site::new(POLICY, &[], App::Login);
    let pair = &site.pair;
    let server_mac = pair.server_mac().unwrap();
    let body = "POST /api/login HTTP/1.1\r\nHost: shop\r\nContent-Length: 26\r\n\r\nuser=admin&password=right\n";
    let frames: Vec<Vec<u8>> = (0..40u16)
        .map(|n| {
            let bystander: Ipv4Addr = CLIENT_V4.parse().unwrap();
            let server: Ipv4Addr = SERVER_V4.parse().unwrap();
            let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], server_mac)
                .ipv4(bystander.octets(), server.octets(), 64)
                .tcp(30000 + n, 8080, 1_000_000 + u32::from(n), 64240)
                .ack(0x5eed_0000 + u32::from(n))
                .psh();
            let mut frame = Vec::with_capacity(builder.size(body.len()));
            builder.write(&mut frame, body.as_bytes()).unwrap();
            frame
        })
        .collect();
    for frame in &frames {
        send_raw_frame(pair, &pair.client_if, frame).unwrap();
    }
    for n in 1..=2 {
        let seen = login(pair, CLIENT_V4, "right");
        assert_eq!(
            (seen.exit, seen.status),
            (0, 200),
            "the bystander's login {n}"
        );
    }
    let stats: serde_json::Value =
        serde_json::from_slice(&site.agent.cli(&["stats", "--json"]).stdout).unwrap();
    println!("{}", stats["rules"]["login"]);
}

/// The shapes a connection's first request can take that Python's server (and nginx for
/// some) reads as a request while the kernel reads none, over real connections: each is
/// reset under `strict`; an ordinary request, and a second request on a kept-alive
/// connection (whose bytes are not the connection's first), are served.
#[test]
fn first_requests_the_server_reads_otherwise_are_reset() {
    require_kernel!();
    let site = Site::new(EVASION_POLICY, &[], App::Login);
    let pair = &site.pair;
    let connect = || KeepAlive::connect(pair, CLIENT_V4, SERVER_V4, 8080, Duration::from_secs(2));
    let line = |start: &str| [start.as_bytes(), b" HTTP/1.1\r\nHost: api\r\n\r\n"].concat();
    let split = [b"GE".to_vec(), line("T /admin")];
    let shapes: [(&str, Vec<Vec<u8>>); 5] = [
        ("split after two bytes", split.to_vec()),
        ("CR LF before the method", vec![line("\r\nGET /admin")]),
        ("a TAB after the method", vec![line("GET\t/admin")]),
        ("a fragment after the path", vec![line("GET /admin#top")]),
        ("an unknown method", vec![line("FETCH /admin")]),
    ];
    for (what, parts) in shapes {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        assert_eq!(connect().send(&parts), Answer::Reset, "{what}");
    }
    let items = line("GET /api/items");
    assert_eq!(
        connect().send(&[&items]),
        Answer::Status(200),
        "an ordinary request"
    );
    let mut kept = connect();
    assert_eq!(kept.send(&[&items]), Answer::Status(200));
    assert_eq!(
        kept.send(&[&items]),
        Answer::Status(200),
        "a second request on the connection"
    );
    drop(kept);
    assert_eq!(site.connections_left(), 0, "connections left on the server");
}
