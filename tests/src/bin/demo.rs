//! `cargo xtask demo`: Portcullis in front of a small service, in two network namespaces
//! joined by a veth pair. A legitimate client, an allow-listed monitor, a denied host, a
//! flooder and a password guesser send traffic; the demo prints what got through and what
//! the agent counted. Everything it creates is removed when it ends, also on failure.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portcullis_tests::{
    agent::Agent,
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    traffic::{Answer, HttpServer, KeepAlive, UdpCounter, http_get, http_request, udp_send},
};

const MONITOR: &str = "10.77.0.5";
const KNOWN_BAD: &str = "10.77.0.66";
const FLOODER: &str = "10.77.0.99";
const GUESSER: &str = "10.77.0.7";

fn main() {
    portcullis_tests::interrupt::clean_up_on_signal();
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn row(who: &str, what: &str, sent: u64, arrived: u64, note: &str) {
    println!("  {who:<26} {what:<22} {sent:>7} {arrived:>8}   {note}");
}

fn run() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo needs root: it creates network namespaces and attaches XDP programs");
    }
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo-policy.yaml");
    let policy = policy.canonicalize().context("examples/demo-policy.yaml")?;
    println!("Portcullis demo: a client namespace and a server namespace joined by a veth pair.");
    println!("Policy: {}\n", policy.display());
    print!("{}", std::fs::read_to_string(&policy)?);

    let pair = NetnsPair::new()?;
    for addr in [MONITOR, KNOWN_BAD, FLOODER, GUESSER] {
        pair.add_client_addr(addr)?;
    }
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[])?;
    let hook = agent
        .stderr()
        .iter()
        .find(|l| l.contains("attached"))
        .cloned()
        .unwrap_or_default();
    println!("\nAgent running on {} ({})", pair.server_if, hook.trim());
    let _http = HttpServer::start_login_app(&pair, SERVER_V4, 8080)?;
    let api = UdpCounter::bind(&pair, "0.0.0.0", 9000)?;

    println!(
        "\n  {:<26} {:<22} {:>7} {:>8}",
        "source", "traffic", "sent", "arrived"
    );
    let mut ok = 0;
    for _ in 0..20 {
        if http_get(&pair, CLIENT_V4, SERVER_V4, 8080, Duration::from_secs(2)) == Some(200) {
            ok += 1;
        }
    }
    row(
        &format!("{CLIENT_V4} (legitimate)"),
        "HTTP GET :8080",
        20,
        ok,
        "all answered",
    );

    let mut bad = 0;
    for _ in 0..5 {
        if http_get(
            &pair,
            KNOWN_BAD,
            SERVER_V4,
            8080,
            Duration::from_millis(500),
        )
        .is_some()
        {
            bad += 1;
        }
    }
    row(
        &format!("{KNOWN_BAD} (deny list)"),
        "HTTP GET :8080",
        5,
        bad,
        "dropped in XDP, no handshake",
    );

    let before = api.count(Duration::from_millis(200), Duration::from_secs(2));
    let monitor_sent = udp_send(
        &pair,
        MONITOR,
        SERVER_V4,
        9000,
        1000,
        Duration::from_micros(200),
    )?;
    let monitor = api.count(Duration::from_millis(300), Duration::from_secs(5)) - before;
    row(
        &format!("{MONITOR} (allow list)"),
        "UDP :9000, ~4000/s",
        monitor_sent,
        monitor,
        "never limited",
    );

    let before = api.count(Duration::from_millis(200), Duration::from_secs(2));
    let start = Instant::now();
    let flood_sent = udp_send(
        &pair,
        FLOODER,
        SERVER_V4,
        9000,
        10_000,
        Duration::from_micros(100),
    )?;
    let elapsed = start.elapsed().as_secs_f64();
    let flood = api.count(Duration::from_millis(300), Duration::from_secs(5)) - before;
    row(
        &format!("{FLOODER} (flooder)"),
        &format!("UDP :9000 for {elapsed:.1} s"),
        flood_sent,
        flood,
        &format!("limit: burst 20 + 100/s = {:.0}", 20.0 + 100.0 * elapsed),
    );

    let guesses = guess_passwords(&pair);
    row(
        &format!("{GUESSER} (guesser)"),
        "POST /api/login",
        guesses.sent,
        guesses.answered_401,
        &format!(
            "401s; {} reset (login rate); banned by its 10th 401: {} more, no connection",
            guesses.reset, guesses.refused
        ),
    );
    let (legit_sent, legit_ok) = legitimate_session(&pair);
    row(
        &format!("{CLIENT_V4} (legitimate)"),
        "login, GET /api/items",
        legit_sent,
        legit_ok,
        "same routes, meanwhile: all answered",
    );

    let stats = agent.cli(&["stats"]);
    println!("\nKernel counters (portcullis stats):");
    print!("{}", String::from_utf8_lossy(&stats.stdout));

    // Wait for the agent's next summary so the events above are flushed.
    std::thread::sleep(Duration::from_millis(1200));
    let events = agent.json_lines("event");
    println!(
        "\nSample events ({} logged as JSON lines on the agent's stdout):",
        events.len()
    );
    for reason in ["denied", "rate_limited", "route_limited"] {
        if let Some(event) = events.iter().find(|e| e["reason"] == reason) {
            println!("  {event}");
        }
    }
    if let Some(event) = events
        .iter()
        .find(|e| e["action"] == "ban" && e["rule"] == "auth-failures")
    {
        println!("  {event}");
    }
    drop(agent);
    drop(pair);
    println!("\nDone: agent stopped, programs detached, namespaces removed.");
    let guesser_banned = guesses.answered_401 == 10 && guesses.refused > 0;
    if ok != 20 || bad != 0 || monitor != monitor_sent || !guesser_banned || legit_ok != legit_sent
    {
        bail!("the demo did not see the expected results (see the table above)");
    }
    Ok(())
}

/// What the password guesser's attempts got.
struct Guesses {
    sent: u64,
    answered_401: u64,
    reset: u64,
    refused: u64,
}

/// Wrong passwords on the login route, a new connection each, about 12 a second, until
/// three in a row get no connection (the ban) or 60 are sent.
fn guess_passwords(pair: &NetnsPair) -> Guesses {
    let mut guesses = Guesses {
        sent: 0,
        answered_401: 0,
        reset: 0,
        refused: 0,
    };
    let mut refused_in_a_row = 0;
    while guesses.sent < 60 && refused_in_a_row < 3 {
        let form = format!("user=admin&password=guess{}", guesses.sent);
        let answer = http_request(
            pair,
            GUESSER,
            SERVER_V4,
            8080,
            ("POST", "/api/login", Some(&form)),
            Duration::from_millis(300),
        );
        guesses.sent += 1;
        match answer {
            Answer::Status(401) => guesses.answered_401 += 1,
            Answer::Status(_) => {}
            Answer::Reset => guesses.reset += 1,
            Answer::Nothing => guesses.refused += 1,
        }
        refused_in_a_row = if answer == Answer::Nothing {
            refused_in_a_row + 1
        } else {
            0
        };
        std::thread::sleep(Duration::from_millis(80));
    }
    guesses
}

/// A user who mistypes once, logs in and reads, on one keep-alive connection: the
/// requests sent and those answered as expected.
fn legitimate_session(pair: &NetnsPair) -> (u64, u64) {
    let mut connection =
        KeepAlive::connect(pair, CLIENT_V4, SERVER_V4, 8080, Duration::from_secs(2));
    let mut expected = vec![
        (("POST", "/api/login", Some("user=ada&password=wrong")), 401),
        (("POST", "/api/login", Some("user=ada&password=right")), 200),
    ];
    expected.extend((0..8).map(|_| (("GET", "/api/items", None), 200)));
    let mut ok = 0;
    for ((method, path, form), status) in &expected {
        if connection.request(method, path, *form) == Answer::Status(*status) {
            ok += 1;
        }
    }
    (expected.len() as u64, ok)
}
