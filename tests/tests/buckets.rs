//! Token buckets under load from several CPUs at once, through the real XDP program
//! (BPF_PROG_TEST_RUN runs the frames on the calling thread's CPU).

use std::{
    sync::{
        Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use agent_common::Reason;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use portcullis::loader::XDP_PROGRAM;
use portcullis_tests::{frames::FrameSpec, harness::Harness, require_kernel};

const RATE_PER_SEC: f64 = 20_000.0;
const BURST: f64 = 100.0;
/// How long each CPU sends the source's packets.
const SEND_FOR: Duration = Duration::from_secs(1);
/// Slack over burst + rate x time for the clock reads around the runs.
const TOLERANCE: f64 = 0.01;

const POLICY: &str = r#"
rate_limits:
  - name: per-source
    protocol: udp
    ports: [9999]
    rate: 20000/s
    burst: 100
"#;

fn pin_to_cpu(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

/// One source sends from both CPUs at once (as a flood spread over two receive queues by
/// varying its source port would): what passes stays within burst + rate x time.
#[test]
fn one_source_from_two_cpus_gets_its_rate_once() {
    require_kernel!();
    let cpus = aya::util::online_cpus().map_err(|(_, e)| e).unwrap();
    assert!(
        cpus.len() >= 2,
        "this test needs two CPUs, the machine has {cpus:?}"
    );
    let h = Harness::new(POLICY).unwrap();
    let frame = FrameSpec::udp("198.51.100.7", 9999).build();
    // Size each CPU's run from the program's cost on this machine (rate-limited packets
    // after the first burst).
    let ns_per_run = h
        .programs
        .xdp_ns_per_run(XDP_PROGRAM, &frame, 100_000)
        .unwrap();
    // Each CPU runs chunks of about 1/20 of SEND_FOR until told to stop, so both send for
    // the same window however fast each CPU runs (a CPU of this VM can be much slower than
    // the other for a while; one fixed run each then overlapped for only 75% of the time).
    let chunk = (SEND_FOR.as_nanos() as f64 / 20.0 / ns_per_run.max(1.0)).max(1.0) as u32;
    // Let the bucket fill again, so the burst is whole.
    thread::sleep(Duration::from_millis(50));
    let before = h.counters().unwrap();

    let barrier = Barrier::new(3);
    let stop = AtomicBool::new(false);
    let (started, per_cpu) = thread::scope(|s| {
        let runs: Vec<_> = cpus[..2]
            .iter()
            .map(|&cpu| {
                let (h, frame, barrier, stop) = (&h, &frame, &barrier, &stop);
                s.spawn(move || {
                    pin_to_cpu(cpu as usize);
                    barrier.wait();
                    let start = Instant::now();
                    let mut sent = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        h.programs
                            .xdp_ns_per_run(XDP_PROGRAM, frame, chunk)
                            .unwrap();
                        sent += u64::from(chunk);
                    }
                    (start, start.elapsed(), sent)
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        thread::sleep(SEND_FOR);
        stop.store(true, Ordering::Relaxed);
        let per_cpu: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
        (started, per_cpu)
    });
    let elapsed = started.elapsed();

    let after = h.counters().unwrap();
    let passed = after.verdict(Reason::WithinLimit) - before.verdict(Reason::WithinLimit);
    let limited = after.verdict(Reason::RateLimited) - before.verdict(Reason::RateLimited);
    let allowed = BURST + RATE_PER_SEC * elapsed.as_secs_f64();
    println!(
        "two CPUs, chunks of {chunk} packets ({ns_per_run:.0} ns each) over {elapsed:?} \
         (each CPU: {:?}): {passed} passed, {limited} limited; burst + rate x time = \
         {allowed:.0}",
        per_cpu
            .iter()
            .map(|(_, d, sent)| (*d, *sent))
            .collect::<Vec<_>>()
    );
    let sent: u64 = per_cpu.iter().map(|(_, _, sent)| sent).sum();
    assert_eq!(
        passed + limited,
        sent,
        "every packet was judged by the rule"
    );
    // Both CPUs must really have sent at once for most of the time, or the test proves
    // nothing about the race.
    let overlap = per_cpu
        .iter()
        .map(|(start, d, _)| *start + *d)
        .min()
        .unwrap()
        .saturating_duration_since(per_cpu.iter().map(|(start, _, _)| *start).max().unwrap());
    assert!(
        overlap.as_secs_f64() >= 0.8 * elapsed.as_secs_f64(),
        "the two CPUs overlapped for only {overlap:?} of {elapsed:?}"
    );
    assert!(
        passed as f64 <= allowed * (1.0 + TOLERANCE),
        "{passed} packets passed, more than burst + rate x time ({allowed:.0}) + {:.0}%",
        TOLERANCE * 100.0
    );
    // And the rate is really given: the source is not starved by its own contention.
    let floor = RATE_PER_SEC * overlap.as_secs_f64() * 0.9;
    assert!(
        passed as f64 >= floor,
        "only {passed} packets passed, less than 90% of the rate over the overlap ({floor:.0})"
    );
}

/// Four sources fill the one set of `capacity: {sources: 4}`, an offender among them with
/// its burst spent. A fifth source's bucket replaces the fullest of the four, not the
/// offender's (an LRU map would have evicted the offender, the least recently seen, and
/// handed it a fresh burst): the offender stays limited, and the source whose bucket went
/// starts over through admission.
#[test]
fn a_new_source_replaces_the_fullest_bucket_not_an_offenders() {
    require_kernel!();
    let h = Harness::new(
        "rate_limits:\n  - {name: api, protocol: udp, ports: [9000], rate: 1/h, burst: 3}\n\
         capacity: {sources: 4}\n",
    )
    .unwrap();
    let verdict = |source: &str| {
        let before = h.counters().unwrap();
        let action = h.xdp(&FrameSpec::udp(source, 9000).build()).unwrap();
        let after = h.counters().unwrap();
        let limited = after.verdict(Reason::RateLimited) - before.verdict(Reason::RateLimited);
        let unadmitted = after.unadmitted - before.unadmitted;
        assert_eq!(
            action == Reason::RateLimited.action(),
            limited == 1,
            "{source}"
        );
        (limited == 1, unadmitted == 1)
    };
    let (offender, others, newcomer) = (
        "198.51.100.1",
        ["198.51.100.2", "198.51.100.3", "198.51.100.4"],
        "198.51.100.5",
    );

    // The offender's first packet is only remembered; the next two spend its burst.
    assert_eq!(verdict(offender), (false, true), "offender, first packet");
    assert_eq!(verdict(offender), (false, false));
    assert_eq!(verdict(offender), (false, false));
    assert_eq!(verdict(offender), (true, false), "offender over its burst");
    // Each of the others takes a bucket with two of its three tokens spent.
    for source in others {
        assert_eq!(verdict(source), (false, true), "{source}, first packet");
        assert_eq!(verdict(source), (false, false), "{source}, takes a bucket");
    }
    assert_eq!(h.telemetry.count_buckets().unwrap(), 4, "the set is full");
    assert_eq!(
        h.counters().unwrap().bucket_evictions,
        0,
        "empty slots taken"
    );

    assert_eq!(verdict(newcomer), (false, true), "newcomer, first packet");
    assert_eq!(verdict(newcomer), (false, false), "newcomer takes a bucket");
    assert_eq!(h.telemetry.count_buckets().unwrap(), 4);
    assert_eq!(h.counters().unwrap().buckets_created, 5);
    assert_eq!(
        h.counters().unwrap().bucket_evictions,
        1,
        "one bucket replaced"
    );

    assert_eq!(
        verdict(offender),
        (true, false),
        "the offender is still limited"
    );
    // The first of the others had the fullest bucket (the earliest to refill): it is gone,
    // and its next packet is a first packet again.
    assert_eq!(
        verdict(others[0]),
        (false, true),
        "{}: bucket replaced",
        others[0]
    );
    assert_eq!(
        verdict(others[1]),
        (false, false),
        "{}: bucket kept",
        others[1]
    );
    assert_eq!(verdict(newcomer), (false, false), "newcomer: bucket kept");
}

/// The bucket count reads the array a window at a time: 2,000 sources spread over the
/// 16,384 sets of `capacity: {sources: 65536}` (four windows) are each counted once.
#[test]
fn every_bucket_is_counted_across_the_whole_array() {
    require_kernel!();
    let h = Harness::new(
        "rate_limits:\n  - {name: api, protocol: udp, ports: [9000], rate: 10/s, burst: 10}\n\
         capacity: {sources: 65536}\n",
    )
    .unwrap();
    const SOURCES: u32 = 2000;
    for i in 0..SOURCES {
        let source = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        let frame = FrameSpec::udp(&source, 9000).build();
        // The first packet is only remembered; the second takes a bucket.
        for _ in 0..2 {
            assert_eq!(h.xdp(&frame).unwrap(), Reason::WithinLimit.action());
        }
    }
    assert_eq!(h.counters().unwrap().buckets_created, u64::from(SOURCES));
    assert_eq!(h.telemetry.count_buckets().unwrap(), SOURCES as usize);
    assert_eq!(h.counters().unwrap().bucket_evictions, 0);
}
