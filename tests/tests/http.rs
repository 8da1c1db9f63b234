//! HTTP routes over real TCP: Python's http.server behind the agent, curl as the client.
//! What a refused client sees, and that no connection is left behind on the server.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use portcullis_tests::{
    agent::{Agent, Leftovers},
    netns::{NetnsPair, SERVER_V4},
    require_kernel,
    traffic::HttpServer,
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
    let started = Instant::now();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.client_ns))
        .args([
            "curl",
            "--silent",
            "--output",
            "/dev/null",
            "--max-time",
            "5",
        ])
        .args(["--write-out", "%{http_code}", "--request", method])
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

/// Established TCP connections on the server's port 8080, as `ss` lists them.
fn server_connections(pair: &NetnsPair) -> usize {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.server_ns))
        .args(["ss", "-Htn", "state", "established", "( sport = :8080 )"])
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn refused_requests_reset_their_connection_and_leave_no_socket_behind() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let _leftovers = Leftovers::of(&pair.server_ns);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    let _server = HttpServer::start(&pair, "0.0.0.0", 8080).unwrap();

    let page = curl(&pair, "GET", "/");
    assert_eq!((page.exit, page.status), (0, 200), "an unrouted page");

    // A denied route: curl sees the connection reset at once, not a hang.
    let admin = curl(&pair, "GET", "/admin/users");
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
        let login = curl(&pair, "POST", "/api/login");
        assert_eq!(
            (login.exit, login.status),
            (0, 501),
            "login {n} within the burst"
        );
    }
    let over = curl(&pair, "POST", "/api/login");
    println!(
        "POST /api/login over its rate: curl exit {}, status {}, after {:?}",
        over.exit, over.status, over.took
    );
    assert_eq!((over.exit, over.status), (56, 0), "login over its rate");
    assert!(over.took < Duration::from_secs(1), "took {:?}", over.took);
    let other = curl(&pair, "GET", "/api/items");
    assert_eq!(
        (other.exit, other.status),
        (0, 404),
        "another route, same client"
    );

    // Every refused connection was freed on the server too.
    let deadline = Instant::now() + Duration::from_secs(2);
    while server_connections(&pair) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server_connections(&pair),
        0,
        "connections left on the server"
    );

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
