//! The control plane: time to parse and to write a deny list, time from a policy file edit
//! to enforcement on live traffic, and the agent's memory when idle.

use std::{
    fmt::Write as _,
    net::UdpSocket,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portcullis::{lists, policy};
use portcullis_tests::{
    agent::Agent,
    harness::Harness,
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    replace_file,
    traffic::UdpCounter,
};
use serde_json::{Value, json};

use crate::{Scale, bench_cidr, median, policy_text};

const PROBE_PORT: u16 = 7000;
/// The probe's send interval, and so the resolution of the edit-to-enforcement time.
const PROBE_GAP: Duration = Duration::from_millis(1);

/// HTTP routes in the route-table row of the apply times.
const APPLY_ROUTES: usize = 10_000;

/// Parse + validate, then write + switch, for each deny-list size and for a large route
/// table.
fn apply_times(scale: &Scale, md: &mut String) -> Result<Value> {
    let _ = writeln!(
        md,
        "\n## Applying a policy (median of {})\n\n| policy | parse and validate | write and switch | total |\n|---|---|---|---|",
        scale.rounds
    );
    let mut applies = Vec::new();
    let mut row = |what: String, small: &str, big: &str, record: Value| -> Result<()> {
        let (parse, write) = apply_time(scale, small, big)?;
        let _ = writeln!(
            md,
            "| {what} | {:.0} ms | {:.0} ms | {:.0} ms |",
            parse * 1e3,
            write * 1e3,
            (parse + write) * 1e3
        );
        let mut record = record;
        record["parse_s"] = json!(parse);
        record["write_s"] = json!(write);
        applies.push(record);
        Ok(())
    };
    for &size in &scale.apply_cidrs {
        let capacity = format!("capacity: {{cidrs: {}}}", size.max(1000) + 16);
        let big = policy_text(size, None);
        let small = policy_text(1, None).replace("capacity: {cidrs: 1016}", &capacity);
        row(
            format!("{size} deny CIDRs"),
            &small,
            &big,
            json!({"cidrs": size}),
        )?;
    }
    let routes = |count: usize| {
        let mut text =
            format!("capacity: {{rules: {APPLY_ROUTES}}}\nhttp:\n  ports: [80]\n  routes:\n");
        for i in 0..count {
            let _ = writeln!(
                text,
                "    - {{name: r{i}, methods: [GET, POST], path: /api/v1/r{i}, rate: 10/s}}"
            );
        }
        text
    };
    row(
        format!("{APPLY_ROUTES} HTTP routes (2 methods each)"),
        &routes(1),
        &routes(APPLY_ROUTES),
        json!({"routes": APPLY_ROUTES}),
    )?;
    // The same entries as a plain-text IP list (the format of Spamhaus DROP and FireHOL):
    // read and merged into the policy instead of parsed from YAML.
    if let Some(&size) = scale.apply_cidrs.last() {
        let (parse, write) = list_apply_time(scale, size)?;
        let _ = writeln!(
            md,
            "| {size} entries of a deny list file (read, merge) | {:.0} ms | {:.0} ms | {:.0} ms |",
            parse * 1e3,
            write * 1e3,
            (parse + write) * 1e3
        );
        applies.push(json!({"list_entries": size, "parse_s": parse, "write_s": write}));
    }
    Ok(Value::Array(applies))
}

/// Median times to parse `big` and to write it over `small`, the policy in force before
/// each round (the same capacity, so that the whole of `big` is written each time).
fn apply_time(scale: &Scale, small: &str, big: &str) -> Result<(f64, f64)> {
    let mut harness = Harness::new(small)?;
    let (mut parse, mut write) = (Vec::new(), Vec::new());
    for _ in 0..scale.rounds {
        let started = Instant::now();
        let parsed = policy::parse(Path::new("bench.yaml"), big)?;
        parse.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        harness.enforcer.apply(parsed)?;
        write.push(started.elapsed().as_secs_f64());
        harness
            .enforcer
            .apply(policy::parse(Path::new("small.yaml"), small)?)?;
    }
    Ok((median(parse), median(write)))
}

/// Median times to read a list of `size` entries and merge it into a policy naming it, and
/// to write that policy over the same policy with the list empty.
fn list_apply_time(scale: &Scale, size: usize) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("feed.netset");
    let mut text = String::with_capacity(size * 16 + 64);
    text.push_str("# a feed, one entry per line\n");
    for i in 0..size {
        let _ = writeln!(text, "{}", bench_cidr(i));
    }
    std::fs::write(&path, &text)?;
    let declared = policy::parse(
        Path::new("bench.yaml"),
        &format!(
            "capacity: {{cidrs: {}}}\ndeny:\n  - {{list: {}, name: feed}}\n",
            size + 16,
            path.display()
        ),
    )?;
    let (empty, _) = lists::expand(&declared, &lists::Copies::default());
    let mut harness = Harness::from_policy(empty.clone())?;
    let (mut parse, mut write) = (Vec::new(), Vec::new());
    for _ in 0..scale.rounds {
        let started = Instant::now();
        let mut copies = lists::Copies::default();
        copies.read_local(&declared, dir.path());
        let (full, in_force) = lists::expand(&declared, &copies);
        parse.push(started.elapsed().as_secs_f64());
        if in_force[0].entries != size {
            bail!(
                "the list put {} of {size} entries in force",
                in_force[0].entries
            );
        }
        let started = Instant::now();
        harness.enforcer.apply(full)?;
        write.push(started.elapsed().as_secs_f64());
        harness.enforcer.apply(empty.clone())?;
    }
    Ok((median(parse), median(write)))
}

/// Edits the policy file to deny the probe's source while it sends one datagram per
/// millisecond, and measures until the last one arrives; then lifts the deny again.
fn edit_to_enforcement(scale: &Scale) -> Result<Vec<f64>> {
    let pair = NetnsPair::new()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.yaml");
    let open = "deny: [192.0.2.0/24]\n";
    let closed = format!("deny: [192.0.2.0/24, {CLIENT_V4}/32]\n");
    std::fs::write(&path, open)?;
    let _agent = Agent::start(&pair.server_ns, &pair.server_if, &path, &[])?;
    let counter = UdpCounter::bind(&pair, SERVER_V4, PROBE_PORT)?;
    let socket = pair.client(|| UdpSocket::bind((CLIENT_V4, 0)))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = socket.send_to(b"probe", (SERVER_V4, PROBE_PORT));
                std::thread::sleep(PROBE_GAP);
            }
        });
        let result = (|| {
            let mut times = Vec::new();
            for _ in 0..scale.rounds {
                wait_for_arrivals(&counter)?;
                let edited = Instant::now();
                replace_file(&path, &closed)?;
                // Enforced once nothing has arrived for a while.
                counter.count(Duration::from_millis(500), Duration::from_secs(10));
                let last = counter.last_arrival();
                if last.elapsed() < Duration::from_millis(500) {
                    bail!("the probe still arrives 10 s after the edit");
                }
                times.push(last.saturating_duration_since(edited).as_secs_f64());
                replace_file(&path, open)?;
            }
            Ok(times)
        })();
        stop.store(true, Ordering::Relaxed);
        let _ = prober.join();
        result
    })
}

/// Waits until the probe gets through (the deny has been lifted).
fn wait_for_arrivals(counter: &UdpCounter) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = counter.last_arrival();
    while Instant::now() < deadline {
        if counter.last_arrival() > before {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the probe did not get through within 10 s of lifting the deny")
}

/// The agent's RSS once it has settled, with a small policy and with a large deny list.
fn idle_rss(scale: &Scale) -> Result<Vec<(usize, u64)>> {
    let mut results = Vec::new();
    for cidrs in [10, *scale.apply_cidrs.get(1).unwrap_or(&1_000)] {
        let pair = NetnsPair::new()?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, policy_text(cidrs, None))?;
        let agent = Agent::start(&pair.server_ns, &pair.server_if, &path, &[])?;
        std::thread::sleep(if scale.smoke {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        });
        results.push((cidrs, agent.rss_kib()?));
    }
    Ok(results)
}

pub fn run(scale: &Scale) -> Result<(String, Value)> {
    let mut md = String::new();
    let applies = apply_times(scale, &mut md)?;

    let edits = edit_to_enforcement(scale)?;
    let edit = median(edits.clone());
    let _ = writeln!(
        md,
        "\n## Policy file edit to enforcement (median of {})\n\n\
         A probe sends one UDP datagram per {} ms; the policy file is replaced by rename to deny \
         it; the figure is the time from the rename to the last datagram that got through.\n\n\
         | edit to enforcement |\n|---|\n| {:.0} ms |",
        scale.rounds,
        PROBE_GAP.as_millis(),
        edit * 1e3
    );

    let rss = idle_rss(scale)?;
    let _ = writeln!(md, "\n## Agent memory, idle\n\n| policy | RSS |\n|---|---|");
    for (cidrs, kib) in &rss {
        let _ = writeln!(
            md,
            "| {cidrs} deny CIDRs | {:.1} MiB |",
            *kib as f64 / 1024.0
        );
    }
    Ok((
        md,
        json!({
            "apply": applies,
            "edit_to_enforcement_s": edits,
            "idle_rss_kib": rss.iter().map(|(c, k)| json!({"cidrs": c, "rss_kib": k})).collect::<Vec<_>>(),
        }),
    ))
}
