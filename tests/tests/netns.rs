//! The real agent on real traffic: two namespaces joined by a veth pair, the agent attached
//! on the server side, UDP, TCP and HTTP from chosen client addresses.

use std::time::{Duration, Instant};

use agent_common::{Action, Reason};
use portcullis_tests::{
    agent::Agent,
    frames::{Ext, FrameSpec},
    harness::Harness,
    netns::{CLIENT_V4, CLIENT_V6, NetnsPair, SERVER_V4, SERVER_V6, mac},
    replace_file, require_kernel,
    traffic::{
        HttpServer, UdpCounter, http_get, send_raw_frame, tcp_connects, tcp_server, udp_send,
        udp_send_in,
    },
};

const DENIED_V4: &str = "10.77.0.66";
const ALLOWED_V4: &str = "10.77.0.5";
const DENIED_V6: &str = "fd77::66";
const SHORT: Duration = Duration::from_millis(700);

const POLICY: &str = r#"
allow:
  - 10.77.0.5
deny:
  - 10.77.0.66
  - fd77::66
rate_limits:
  - {name: udp-api, protocol: udp, ports: [9000], rate: 100/s, burst: 20}
"#;

struct Setup {
    pair: NetnsPair,
    _dir: tempfile::TempDir,
    policy: std::path::PathBuf,
}

fn setup(policy: &str) -> Setup {
    let pair = NetnsPair::new().unwrap();
    for addr in [DENIED_V4, ALLOWED_V4, DENIED_V6] {
        pair.add_client_addr(addr).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    Setup {
        pair,
        _dir: dir,
        policy: path,
    }
}

fn start(s: &Setup, extra: &[&str]) -> Agent {
    Agent::start(&s.pair.server_ns, &s.pair.server_if, &s.policy, extra).unwrap()
}

/// UDP, TCP and HTTP for the denied, allowed and ordinary sources.
fn check_enforcement(s: &Setup) {
    let pair = &s.pair;
    tcp_server(pair, "0.0.0.0", 7000).unwrap();
    let _http = HttpServer::start(pair, SERVER_V4, 8080).unwrap();

    assert!(
        tcp_connects(pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "ordinary client: TCP"
    );
    assert!(
        tcp_connects(pair, ALLOWED_V4, SERVER_V4, 7000, SHORT),
        "allowed client: TCP"
    );
    assert!(
        !tcp_connects(pair, DENIED_V4, SERVER_V4, 7000, SHORT),
        "denied client got a TCP connection"
    );
    assert_eq!(
        http_get(pair, CLIENT_V4, SERVER_V4, 8080, Duration::from_secs(3)),
        Some(200),
        "ordinary client: HTTP"
    );
    assert_eq!(
        http_get(pair, DENIED_V4, SERVER_V4, 8080, SHORT),
        None,
        "denied client got an HTTP answer"
    );

    // Denied UDP: nothing arrives. (Other ports than the limited one, so no rule interferes.)
    let sink = UdpCounter::bind(pair, "0.0.0.0", 9100).unwrap();
    udp_send(pair, DENIED_V4, SERVER_V4, 9100, 200, Duration::ZERO).unwrap();
    assert_eq!(
        sink.count(Duration::from_millis(300), Duration::from_secs(2)),
        0,
        "denied UDP arrived"
    );

    // The allowed source is never limited: 300 datagrams at ~3000/s on the 100/s port.
    let api = UdpCounter::bind(pair, "0.0.0.0", 9000).unwrap();
    let sent = udp_send(
        pair,
        ALLOWED_V4,
        SERVER_V4,
        9000,
        300,
        Duration::from_micros(300),
    )
    .unwrap();
    let got = api.count(Duration::from_millis(300), Duration::from_secs(5));
    assert_eq!(
        got, sent,
        "allowed source was limited: {got} of {sent} arrived"
    );
}

#[test]
fn xdp_enforces_deny_allow_and_limits_on_udp_tcp_and_http() {
    require_kernel!();
    let s = setup(POLICY);
    let mut agent = start(&s, &[]);
    assert!(
        agent.stderr_contains("hook=\"xdp-native\"") || agent.stderr_contains("xdp-native"),
        "{:?}",
        agent.stderr()
    );
    check_enforcement(&s);
    let status = agent.stop().unwrap();
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        agent.stderr().join("\n")
    );
    // Events: denied traffic was reported as JSON lines with every field.
    let events = agent.json_lines("event");
    let denied = events
        .iter()
        .find(|e| e["reason"] == "denied" && e["source"] == DENIED_V4)
        .unwrap_or_else(|| panic!("no denied event in {events:?}"));
    for field in [
        "time",
        "interface",
        "source",
        "dst_port",
        "protocol",
        "reason",
        "rule",
        "mode",
        "verdict",
    ] {
        assert!(!denied[field].is_null(), "event lacks {field}: {denied}");
    }
    assert_eq!(denied["verdict"], "drop");
    assert_eq!(denied["mode"], "enforce");
    assert_eq!(denied["interface"], s.pair.server_if);
    assert!(!agent.json_lines("summary").is_empty(), "no summary line");
    // Clean exit: pins gone, nothing left attached.
    assert!(!agent.pin_dir.exists(), "pins left behind");
    let link = std::process::Command::new("ip")
        .args([
            "-n",
            &s.pair.server_ns,
            "-d",
            "link",
            "show",
            &s.pair.server_if,
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "XDP program left attached"
    );
}

#[test]
fn tc_hook_gives_the_same_results() {
    require_kernel!();
    let s = setup(POLICY);
    let mut agent = start(&s, &["--hook", "tc"]);
    assert!(agent.stderr_contains("hook=\"tc\""), "{:?}", agent.stderr());
    check_enforcement(&s);
    assert!(agent.stop().unwrap().success());
}

/// A packet whose IPv6 extension headers run past the first 256 bytes, arriving as a
/// non-linear skb (only its Ethernet header linear): TC must pull what the parser needs and
/// judge it as XDP does (which sees whole frames), not as truncated.
#[test]
fn tc_reads_headers_beyond_the_linear_part_of_a_packet() {
    require_kernel!();
    let s = setup("rate_limits:\n  - {name: udp9, protocol: udp, ports: [9], rate: 1000/s}\n");
    s.pair.set_mtu(9000).unwrap();
    let mut agent = start(&s, &["--hook", "tc"]);
    let mut frame = FrameSpec {
        ipv6_exts: vec![Ext::LongDestOpts; 2],
        payload: 5000,
        ..FrameSpec::udp(CLIENT_V6, 9)
    }
    .build();
    // Addressed to the server's interface, so that the stack takes it as its own.
    frame[..6].copy_from_slice(&mac(&s.pair.server_ns, &s.pair.server_if).unwrap());
    // The reference: XDP's verdict on the same headers (a test run takes a page at most).
    let reference =
        Harness::new("rate_limits:\n  - {name: udp9, protocol: udp, ports: [9], rate: 1000/s}\n")
            .unwrap();
    assert_eq!(reference.xdp(&frame[..3000]).unwrap(), Action::Pass);
    let before = reference.counters().unwrap();
    assert_eq!(
        before.verdict(Reason::WithinLimit),
        1,
        "XDP read the UDP port"
    );

    send_raw_frame(&s.pair, &s.pair.client_if, &frame).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats: serde_json::Value =
            serde_json::from_slice(&agent.cli(&["stats", "--json"]).stdout).unwrap();
        if stats["verdicts"]["within_limit"] != 0
            || stats["verdicts"]["malformed"] != 0
            || Instant::now() > deadline
        {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        stats["verdicts"]["malformed"], 0,
        "TC judged it malformed: {stats}"
    );
    assert_eq!(stats["verdicts"]["within_limit"], 1, "{stats}");
    assert_eq!(stats["rules"]["udp9"]["passed"], 1, "{stats}");
    assert!(agent.stop().unwrap().success());
}

/// Sends at a steady pace above the limit and checks what arrives against the bucket:
/// burst + rate * elapsed, within a tolerance for scheduling on a small machine.
/// Returns (sent, arrived).
fn check_flood_cut(pair: &NetnsPair, src: &str, dst: &str) -> (u64, u64) {
    let sink =
        UdpCounter::bind(pair, if dst.contains(':') { "::" } else { "0.0.0.0" }, 9000).unwrap();
    let start = Instant::now();
    // About 2,000 packets per second for 1.5 s: twenty times the 100/s limit.
    let sent = udp_send(pair, src, dst, 9000, 3000, Duration::from_micros(500)).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let got = sink.count(Duration::from_millis(300), Duration::from_secs(5));
    let expected = 20.0 + 100.0 * elapsed;
    println!("{src}: sent {sent} in {elapsed:.2} s, {got} arrived, bucket allows {expected:.0}");
    assert!(
        sent as f64 > 3.0 * expected,
        "the flood was too slow to test the limit: {sent} in {elapsed:.2} s"
    );
    assert!(
        (got as f64) <= expected * 1.1 + 5.0 && (got as f64) >= expected * 0.8,
        "{src}: {got} arrived, expected about {expected:.0} (burst 20 + 100/s over {elapsed:.2} s)"
    );
    (sent, got)
}

#[test]
fn a_flood_is_cut_to_the_configured_rate() {
    require_kernel!();
    let s = setup(POLICY);
    let mut agent = start(&s, &[]);
    let (sent, arrived) = check_flood_cut(&s.pair, CLIENT_V4, SERVER_V4);
    // The kernel's counters account for every packet: what arrived passed the rule, the
    // rest was dropped by it.
    let stats = agent.cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let limited = stats["verdicts"]["rate_limited"].as_u64().unwrap();
    let within = stats["verdicts"]["within_limit"].as_u64().unwrap();
    assert_eq!((within, limited), (arrived, sent - arrived), "{stats}");
    // So does the agent's summary, per rule and by name.
    assert!(agent.stop().unwrap().success());
    let summary = agent.json_lines("summary").pop().expect("a final summary");
    let rule = &summary["rules"]["udp-api"];
    assert_eq!(rule["passed"].as_u64(), Some(arrived), "{summary}");
    assert_eq!(rule["dropped"].as_u64(), Some(sent - arrived), "{summary}");
    assert_eq!(
        summary["verdicts"]["rate_limited"].as_u64(),
        Some(sent - arrived),
        "{summary}"
    );
}

#[test]
fn ipv6_is_enforced_and_grouped_by_64() {
    require_kernel!();
    let s = setup(POLICY);
    let _agent = start(&s, &[]);
    let pair = &s.pair;
    tcp_server(pair, "::", 7000).unwrap();
    assert!(
        tcp_connects(pair, CLIENT_V6, SERVER_V6, 7000, SHORT),
        "ordinary IPv6 client"
    );
    assert!(
        !tcp_connects(pair, DENIED_V6, SERVER_V6, 7000, SHORT),
        "denied IPv6 client got through"
    );
    check_flood_cut(pair, CLIENT_V6, SERVER_V6);
    // fd77::1 and fd77::66 share a /64; fd77::66 is denied anyway, so check with another
    // address of the /64 that its bucket is the one fd77::1 just emptied.
    pair.add_client_addr("fd77::7").unwrap();
    let sink = UdpCounter::bind(pair, "::", 9000).unwrap();
    udp_send(pair, "fd77::7", SERVER_V6, 9000, 200, Duration::ZERO).unwrap();
    let got = sink.count(Duration::from_millis(300), Duration::from_secs(3));
    assert!(
        got < 60,
        "another address of the same /64 got a fresh bucket: {got} of 200 arrived"
    );
}

#[test]
fn policy_edits_apply_without_restart_and_broken_edits_change_nothing() {
    require_kernel!();
    let s = setup("deny: [192.0.2.1]\n");
    let agent = start(&s, &[]);
    let pair = &s.pair;
    tcp_server(pair, "0.0.0.0", 7000).unwrap();
    assert!(
        tcp_connects(pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "client before the edit"
    );

    // Edit in place: deny the client.
    std::fs::write(&s.policy, format!("deny: [{CLIENT_V4}]\n")).unwrap();
    assert!(
        agent.wait_for_stderr("policy reloaded", Duration::from_secs(5)),
        "{:?}",
        agent.stderr()
    );
    assert!(
        !tcp_connects(pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "client still gets through after the edit"
    );

    // A broken edit is reported and the deny stays in force.
    replace_file(&s.policy, "deny: [10.77.0.1\n").unwrap();
    assert!(
        agent.wait_for_stderr("policy not reloaded", Duration::from_secs(5)),
        "{:?}",
        agent.stderr()
    );
    assert!(
        agent.stderr_contains("unclosed bracket"),
        "{:?}",
        agent.stderr()
    );
    assert!(
        !tcp_connects(pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "a broken edit lifted the deny"
    );

    // An invalid (well-formed) edit is refused too.
    replace_file(&s.policy, "deny: [10.77.0.1/8]\n").unwrap();
    assert!(
        agent.wait_for_stderr("host bits are set", Duration::from_secs(5)),
        "{:?}",
        agent.stderr()
    );
    assert!(
        !tcp_connects(pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "an invalid edit lifted the deny"
    );

    // A good edit through rename lifts it.
    replace_file(&s.policy, "deny: []\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !tcp_connects(pair, CLIENT_V4, SERVER_V4, 7000, SHORT) {}
    assert!(
        tcp_connects(pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "the fixed policy was not applied"
    );
}

#[test]
fn attaches_to_the_interface_of_the_default_route() {
    require_kernel!();
    let s = setup(&format!("deny: [{CLIENT_V4}]\n"));
    // No default route yet: a clear refusal, not an agent that protects nothing.
    let refused = Agent::start_run(&s.pair.server_ns, &s.policy, &["--iface-of-default-route"])
        .err()
        .expect("the agent started without a default route");
    assert!(
        refused.to_string().contains("no default route"),
        "{refused:#}"
    );

    s.pair.add_server_default_route().unwrap();
    let agent =
        Agent::start_run(&s.pair.server_ns, &s.policy, &["--iface-of-default-route"]).unwrap();
    assert!(
        agent.stderr_contains(&format!("interfaces=[\"{}\"]", s.pair.server_if)),
        "{:?}",
        agent.stderr()
    );
    tcp_server(&s.pair, "0.0.0.0", 7000).unwrap();
    assert!(
        !tcp_connects(&s.pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "the denied client got through the default route's interface"
    );
}

#[test]
fn falls_back_to_tc_where_xdp_cannot_attach() {
    require_kernel!();
    // The loopback device has no native XDP support, so `--xdp-mode native` must fail there
    // and the agent must fall back to TC ingress and still enforce.
    let pair = NetnsPair::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "deny: [127.0.0.2]\n").unwrap();
    let agent = Agent::start(&pair.server_ns, "lo", &policy, &["--xdp-mode", "native"]).unwrap();
    assert!(
        agent.stderr_contains("falling back to TC"),
        "{:?}",
        agent.stderr()
    );
    assert!(agent.stderr_contains("hook=\"tc\""), "{:?}", agent.stderr());

    let sink = UdpCounter::bind(&pair, "127.0.0.1", 9300).unwrap();
    udp_send_in(
        &pair.server_ns,
        "127.0.0.2",
        "127.0.0.1",
        9300,
        50,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(
        sink.count(Duration::from_millis(300), Duration::from_secs(2)),
        0,
        "denied loopback traffic arrived"
    );
    udp_send_in(
        &pair.server_ns,
        "127.0.0.1",
        "127.0.0.1",
        9300,
        50,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(
        sink.count(Duration::from_millis(300), Duration::from_secs(2)),
        50,
        "ordinary loopback traffic lost"
    );
}
