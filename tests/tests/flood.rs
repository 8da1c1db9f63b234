//! The agent under a flood of spoofed sources (the benchmark's generator, frames out of
//! the client's veth, each from the next address of a /12, so a million one-packet
//! sources): rate limits keep holding the sources that matter.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use portcullis_tests::{
    agent::{Agent, Leftovers},
    flood::{FANOUT_COPIES, Flood, Generator, Sources, udp_frame},
    netns::{NetnsPair, SERVER_V4, in_ns},
    output_text, require_kernel,
    traffic::{UdpCounter, http_fetch, udp_send},
};

const OFFENDER: &str = "10.77.0.99";
/// The spoofed sources are this address's /12.
const SPOOFED_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const SPOOFED_FRAMES: u64 = 1_000_000;
const RATE_PER_SEC: f64 = 2.0;
const BURST: f64 = 2.0;

/// The rule covers the flood's port and the offender's; `sources: 4096` keeps the bucket
/// map small, so that a flood inserting buckets would evict everyone's within milliseconds.
const POLICY: &str = r#"
rate_limits:
  - name: api
    protocol: udp
    ports: [9000, 9001]
    rate: 2/s
    burst: 2
capacity: {sources: 4096}
"#;

const METRICS: &str = "127.0.0.1:9478";

struct Bed {
    pair: NetnsPair,
    agent: Agent,
    _leftovers: Leftovers,
    _dir: tempfile::TempDir,
}

fn bed(policy_text: &str, extra: &[&str]) -> Bed {
    let pair = NetnsPair::new().unwrap();
    pair.add_client_addr(OFFENDER).unwrap();
    pair.pin_server_neighbour().unwrap();
    let leftovers = Leftovers::of(&pair.server_ns);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text).unwrap();
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, extra).unwrap();
    Bed {
        pair,
        agent,
        _leftovers: leftovers,
        _dir: dir,
    }
}

/// Floods the rule's port 9000 with `frames` frames from spoofed `sources` (for `limit` at
/// most) while `during` runs; returns the frames sent and what `during` returned.
fn while_flooded<T: Send>(
    bed: &Bed,
    sources: Sources,
    frames: u64,
    limit: Duration,
    during: impl FnOnce(&AtomicBool) -> T + Send,
) -> (u64, T) {
    let generator = Generator::new().unwrap();
    let frame = udp_frame(bed.pair.server_mac().unwrap(), SPOOFED_BASE, 9000).unwrap();
    let flooding = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let sent = generator.send(
                &bed.pair.client_ns,
                &bed.pair.client_if,
                &Flood {
                    frame: &frame,
                    sources,
                    frames,
                    limit,
                    per_second: None,
                    realtime: false,
                },
            );
            flooding.store(false, Ordering::Relaxed);
            sent
        });
        std::thread::sleep(Duration::from_millis(100));
        let result = during(&flooding);
        let sent = flood.join().unwrap().unwrap();
        (sent.frames, result)
    })
}

/// A steady offender sends about 100 packets a second at the rule while a million spoofed
/// one-packet sources flood it: it gets burst + rate x time, not a fresh burst each time
/// the flood would have evicted its bucket. (At 100 packets a second the flood would insert
/// some 17,000 buckets between two of its packets, four times the map.)
#[test]
fn a_steady_offender_stays_limited_while_spoofed_sources_flood_the_rule() {
    require_kernel!();
    let bed = bed(POLICY, &[]);
    let offender_sink = UdpCounter::bind(&bed.pair, "0.0.0.0", 9001).unwrap();
    let (spoofed, (offered, took)) = while_flooded(
        &bed,
        Sources::Sequential,
        SPOOFED_FRAMES,
        Duration::from_secs(30),
        |flooding| {
            let started = Instant::now();
            let mut offered = 0;
            // At most 10 s of packets 10 ms apart.
            while flooding.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(10) {
                offered += udp_send(
                    &bed.pair,
                    OFFENDER,
                    SERVER_V4,
                    9001,
                    1,
                    Duration::from_millis(10),
                )
                .unwrap();
            }
            (offered, started.elapsed())
        },
    );
    let passed = offender_sink.count(Duration::from_millis(300), Duration::from_secs(3));
    let allowed = BURST + RATE_PER_SEC * took.as_secs_f64();
    println!(
        "{spoofed} spoofed frames; the offender sent {offered} in {took:?}, {passed} passed \
         (burst + rate x time = {allowed:.0})"
    );
    assert!(spoofed >= SPOOFED_FRAMES, "the flood sent only {spoofed}");
    assert!(
        offered as f64 >= 3.0 * allowed,
        "the offender sent too little ({offered}) to show a limit"
    );
    assert!(
        passed as f64 <= allowed * 1.1 + 2.0,
        "{passed} of the offender's packets passed, over burst + rate x time ({allowed:.0})"
    );
    assert!(
        passed as f64 >= BURST,
        "only {passed} of the offender's packets passed"
    );
}

/// How long `f` took, and what it returned.
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let value = f();
    (started.elapsed(), value)
}

/// While 2^20 spoofed sources flood a rate-limited port (a third of them come back within
/// the burst window and take buckets: the million-entry bucket map fills and churns), the
/// control plane answers: a block takes effect, and `stats` and `/metrics` answer, within
/// a quarter of a second (the bar is a second; an agent that walks the bucket map per
/// request took 0.75 s here, and more the larger the map), and `/healthz` stays 200.
#[test]
fn the_control_plane_answers_during_a_spoofed_flood() {
    require_kernel!();
    let bed = bed(
        "rate_limits:\n  - {name: api, protocol: udp, ports: [9000], rate: 5/s, burst: 5}\n\
         capacity: {sources: 1000000}\n",
        &["--metrics", METRICS],
    );
    let blocked_sink = UdpCounter::bind(&bed.pair, "0.0.0.0", 9002).unwrap();
    let (spoofed, checks) = while_flooded(
        &bed,
        Sources::Spoofed,
        u64::MAX,
        Duration::from_secs(10),
        |flooding| {
            // Let the flood fill the bucket map first.
            std::thread::sleep(Duration::from_millis(500));
            let mut healthz = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut took = |what: &str, d: Duration| {
                println!("{what}: {d:?}");
                slowest = slowest.max(d);
            };
            let (d, blocked) = timed(|| bed.agent.cli(&["block", OFFENDER]));
            took("block", d);
            assert!(blocked.status.success(), "{}", output_text(&blocked));
            udp_send(
                &bed.pair,
                OFFENDER,
                SERVER_V4,
                9002,
                20,
                Duration::from_millis(1),
            )
            .unwrap();
            for _ in 0..3 {
                let (d, stats) = timed(|| bed.agent.cli(&["stats", "--json"]));
                took("stats", d);
                assert!(stats.status.success(), "{}", output_text(&stats));
                let (d, metrics) = timed(|| http_fetch(&bed.pair.server_ns, METRICS, "/metrics"));
                took("/metrics", d);
                assert_eq!(metrics.map(|(status, _)| status), Some(200));
                healthz.push(http_fetch(&bed.pair.server_ns, METRICS, "/healthz").map(|(s, _)| s));
                std::thread::sleep(Duration::from_millis(200));
            }
            (slowest, healthz, flooding.load(Ordering::Relaxed))
        },
    );
    let (slowest, healthz, still_flooding) = checks;
    println!("{spoofed} spoofed frames; slowest answer {slowest:?}; healthz {healthz:?}");
    assert!(still_flooding, "the flood ended before the checks did");
    assert!(
        slowest < Duration::from_millis(250),
        "an answer took {slowest:?}"
    );
    assert!(healthz.iter().all(|s| *s == Some(200)), "{healthz:?}");
    assert_eq!(
        blocked_sink.count(Duration::from_millis(300), Duration::from_secs(3)),
        0,
        "the block did not take effect"
    );
}

/// Frames of each paced flood below: whole fan-outs.
const COUNTED_FRAMES: u64 = 1_000 * FANOUT_COPIES as u64;

/// The generator delivers the frames it counts, each a valid datagram: of a paced flood,
/// every frame reaches the server's UDP stack or is one the receiving ring dropped (a paced
/// chunk leaves at once), spoofed sources (rewritten in the fan-out, checksums fixed)
/// included. The benchmark's "offered" column rests on this.
#[test]
fn the_generator_delivers_every_frame_it_counts_as_valid_udp() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    // Frames from the fan-out arrive as XDP frames, which veth takes with NAPI on: GRO.
    in_ns(
        &pair.server_ns,
        &["ethtool", "-K", &pair.server_if, "gro", "on"],
    )
    .unwrap();
    let generator = Generator::new().unwrap();
    for sources in [Sources::One, Sources::Spoofed, Sources::Sequential] {
        let frame = udp_frame(pair.server_mac().unwrap(), SPOOFED_BASE, 9).unwrap();
        let before = pair.server_udp_no_ports().unwrap();
        let ring_before = pair.server_rx_dropped().unwrap();
        let sent = generator
            .send(
                &pair.client_ns,
                &pair.client_if,
                &Flood {
                    frame: &frame,
                    sources,
                    frames: COUNTED_FRAMES,
                    limit: Duration::from_secs(10),
                    per_second: Some(100_000),
                    realtime: false,
                },
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let arrived = pair.server_udp_no_ports().unwrap() - before;
        let overflowed = pair.server_rx_dropped().unwrap() - ring_before;
        println!(
            "{sources:?}: sent {} in {:?}, {arrived} arrived, the ring dropped {overflowed}",
            sent.frames, sent.elapsed
        );
        assert_eq!(sent.frames, COUNTED_FRAMES, "{sources:?}");
        assert_eq!(
            arrived + overflowed,
            sent.frames,
            "{sources:?}: datagrams that reached UDP, and frames the ring dropped"
        );
        assert!(
            arrived * 10 >= sent.frames * 9,
            "{sources:?}: only {arrived} arrived"
        );
    }
}
