//! The metrics endpoint, scraped after known traffic: the numbers must be the ones the
//! traffic produced. Health and readiness probes, including readiness going away.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use portcullis_tests::{
    agent::Agent,
    frames::FrameSpec,
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    require_kernel,
    traffic::{UdpCounter, connect_from, http_fetch, send_raw_frame, udp_send},
};

const DENIED: &str = "10.77.0.66";
const METRICS: &str = "127.0.0.1:9477";

fn metric(body: &str, line_start: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{body}"))
}

#[test]
fn metrics_report_what_the_traffic_produced() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    pair.add_client_addr(DENIED).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("deny:\n  - {{cidr: {DENIED}, name: bad}}\nrate_limits:\n  - {{name: api, protocol: udp, ports: [9000], rate: 1/h, burst: 10}}\n"),
    )
    .unwrap();
    let agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--metrics", METRICS, "--bpf-stats"],
    )
    .unwrap();

    let (status, body) = http_fetch(&pair.server_ns, METRICS, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_fetch(&pair.server_ns, METRICS, "/readyz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let sink = UdpCounter::bind(&pair, "0.0.0.0", 9000).unwrap();
    udp_send(&pair, DENIED, SERVER_V4, 9100, 50, Duration::ZERO).unwrap();
    udp_send(
        &pair,
        CLIENT_V4,
        SERVER_V4,
        9000,
        300,
        Duration::from_micros(100),
    )
    .unwrap();
    assert_eq!(
        sink.count(Duration::from_millis(300), Duration::from_secs(3)),
        10
    );

    // Map occupancy comes from the census, counted once a second.
    std::thread::sleep(portcullis::census::INTERVAL + Duration::from_millis(300));
    let (status, body) = http_fetch(&pair.server_ns, METRICS, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(
            &body,
            "portcullis_packets_total{reason=\"denied\",verdict=\"drop\"}"
        ),
        50
    );
    assert_eq!(
        metric(
            &body,
            "portcullis_packets_total{reason=\"rate_limited\",verdict=\"drop\"}"
        ),
        290
    );
    assert_eq!(
        metric(
            &body,
            "portcullis_packets_total{reason=\"within_limit\",verdict=\"pass\"}"
        ),
        10
    );

    assert_eq!(
        metric(
            &body,
            "portcullis_rule_packets_total{rule=\"api\",outcome=\"passed\"}"
        ),
        10
    );
    assert_eq!(
        metric(
            &body,
            "portcullis_rule_packets_total{rule=\"api\",outcome=\"dropped\"}"
        ),
        290
    );
    assert_eq!(
        metric(
            &body,
            "portcullis_rule_packets_total{rule=\"bad\",outcome=\"dropped\"}"
        ),
        50
    );
    let iface = format!(
        "portcullis_interface_packets_total{{interface=\"{}\",verdict=\"drop\"}}",
        pair.server_if
    );
    assert_eq!(metric(&body, &iface), 340);
    let written = metric(&body, "portcullis_events_total{outcome=\"written\"}");
    let suppressed = metric(&body, "portcullis_events_total{outcome=\"suppressed\"}");
    let lost = metric(&body, "portcullis_events_total{outcome=\"lost\"}");
    assert_eq!(
        written + suppressed + lost,
        340,
        "every drop is an event, written or counted"
    );
    assert_eq!(metric(&body, "portcullis_map_entries{map=\"deny\"}"), 1);
    assert_eq!(metric(&body, "portcullis_map_entries{map=\"buckets\"}"), 1);
    assert_eq!(metric(&body, "portcullis_policy_version"), 1);
    assert_eq!(metric(&body, "portcullis_policy_apply_failures_total"), 0);
    // With --bpf-stats the kernel timed the program: it ran for every packet above (and for
    // ARP and IPv6 neighbour discovery), and took some time doing it.
    let program = format!("{{interface=\"{}\",hook=\"xdp-native\"}}", pair.server_if);
    let runs = metric(&body, &format!("portcullis_program_runs_total{program}"));
    assert!(runs >= 350, "{runs} runs for 350 packets");
    assert!(
        metric(
            &body,
            &format!("portcullis_program_run_time_ns_total{program}")
        ) > 0
    );

    // Malformed frames are counted by what was wrong with them: three cut inside their UDP
    // header, from a source no rule names.
    let cut = FrameSpec::udp("10.77.0.9", 9).build();
    for _ in 0..3 {
        send_raw_frame(&pair, &pair.client_if, &cut[..14 + 20 + 4]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (_, body) = http_fetch(&pair.server_ns, METRICS, "/metrics").unwrap();
    let packets = |reason: &str| {
        metric(
            &body,
            &format!("portcullis_packets_total{{reason=\"{reason}\",verdict=\"drop\"}}"),
        )
    };
    let malformed = |cause: &str| {
        metric(
            &body,
            &format!("portcullis_malformed_total{{cause=\"{cause}\"}}"),
        )
    };
    assert_eq!(packets("malformed"), 3);
    assert_eq!(malformed("truncated_udp"), 3);
    assert_eq!(malformed("truncated_tcp"), 0);

    // A broken edit counts as a failed apply.
    std::fs::write(&policy, "deny: [\n").unwrap();
    assert!(agent.wait_for_stderr("policy not reloaded", Duration::from_secs(5)));
    let (_, body) = http_fetch(&pair.server_ns, METRICS, "/metrics").unwrap();
    assert_eq!(metric(&body, "portcullis_policy_apply_failures_total"), 1);

    // Readiness is read back from the kernel: without the link pin it is not ready.
    for entry in std::fs::read_dir(agent.pin_dir.join("links")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let (status, body) = http_fetch(&pair.server_ns, METRICS, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready:"), "{body}");
}

/// 2,000 idle or slow (one header byte every half second) connections to the metrics
/// endpoint from 40 addresses, held open: the agent closes those over its bounds at once
/// and the rest when their header time is up; its memory stays bounded, and `/healthz`,
/// the control socket and enforcement go on working throughout.
#[test]
fn idle_and_slow_connections_cannot_take_the_endpoint_down() {
    require_kernel!();
    const ATTACKERS: u32 = 40;
    const PER_ATTACKER: u32 = 50;
    let pair = NetnsPair::new().unwrap();
    pair.add_client_addr(DENIED).unwrap();
    let attackers: Vec<String> = (0..ATTACKERS)
        .map(|i| format!("10.77.0.{}", 100 + i))
        .collect();
    for addr in &attackers {
        pair.add_client_addr(addr).unwrap();
    }
    // The test holds the 2,000 sockets itself.
    raise_own_open_file_limit(4096);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, format!("deny: [{DENIED}]\n")).unwrap();
    let agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--metrics", "0.0.0.0:9479"],
    )
    .unwrap();
    let rss_before = agent.rss_kib().unwrap();

    let mut held = Vec::new();
    for (i, addr) in attackers.iter().enumerate() {
        for _ in 0..PER_ATTACKER {
            if let Some(stream) = connect_from(&pair, addr, SERVER_V4, 9479, Duration::from_secs(2))
            {
                held.push((i % 2 == 0, stream));
            }
        }
    }
    let opened = held.len();
    let probes = |when: &str| {
        let health = http_fetch(&pair.server_ns, "127.0.0.1:9479", "/healthz");
        assert_eq!(
            health.map(|(status, _)| status),
            Some(200),
            "{when}: /healthz"
        );
        let status = agent.cli(&["status", "--json"]);
        assert!(status.status.success(), "{when}: control socket");
        let sink = UdpCounter::bind(&pair, "0.0.0.0", 9100).unwrap();
        udp_send(&pair, DENIED, SERVER_V4, 9100, 10, Duration::ZERO).unwrap();
        assert_eq!(
            sink.count(Duration::from_millis(200), Duration::from_secs(2)),
            0,
            "{when}: enforcement"
        );
    };
    probes("connections just opened");
    // The slow half sends a header byte every half second for 5 s (past the header time).
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        for (_, stream) in held.iter_mut().filter(|(slow, _)| *slow) {
            let _ = stream.write_all(b"G");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    probes("after 5 s of slow headers");
    let rss_during = agent.rss_kib().unwrap();
    let mut still_open = 0;
    for (_, stream) in &mut held {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        // Open and quiet: WouldBlock. Closed by the agent: EOF or an error.
        if matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            still_open += 1;
        }
    }
    println!(
        "{opened} connections opened; RSS {rss_before} KiB before, {rss_during} KiB during; \
         {still_open} still open after 5 s"
    );
    assert!(opened >= 1900, "only {opened} connections could be opened");
    assert_eq!(still_open, 0, "connections outlived the header time");
    assert!(
        rss_during < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
}

fn raise_own_open_file_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.max(wanted.min(limit.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}
