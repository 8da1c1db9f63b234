//! The agent under a flood of spoofed sources (the benchmark's generator: live frames out of
//! the client's veth, each from the next address of a /12, so a million one-packet
//! sources): rate limits keep holding the sources that matter.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use portcullis_tests::{
    agent::{Agent, Leftovers},
    flood::{Flood, Generator, Sources, udp_frame},
    netns::{NetnsPair, SERVER_V4},
    require_kernel,
    traffic::{UdpCounter, udp_send},
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

struct Bed {
    pair: NetnsPair,
    _agent: Agent,
    _leftovers: Leftovers,
    _dir: tempfile::TempDir,
}

fn bed(policy_text: &str) -> Bed {
    let pair = NetnsPair::new().unwrap();
    pair.add_client_addr(OFFENDER).unwrap();
    let leftovers = Leftovers::of(&pair.server_ns);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text).unwrap();
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    Bed {
        pair,
        _agent: agent,
        _leftovers: leftovers,
        _dir: dir,
    }
}

/// Floods the rule's port 9000 with `SPOOFED_FRAMES` spoofed one-packet sources while
/// `during` runs; returns the frames sent and what `during` returned.
fn while_flooded<T: Send>(bed: &Bed, during: impl FnOnce(&AtomicBool) -> T + Send) -> (u64, T) {
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
                    sources: Sources::Sequential,
                    frames: SPOOFED_FRAMES,
                    limit: Duration::from_secs(30),
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
    let bed = bed(POLICY);
    let offender_sink = UdpCounter::bind(&bed.pair, "0.0.0.0", 9001).unwrap();
    let (spoofed, (offered, took)) = while_flooded(&bed, |flooding| {
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
    });
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
