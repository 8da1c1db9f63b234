//! `cargo xtask bench`: what Portcullis costs, measured side by side with a baseline in the
//! same run. Every figure is a median over repeated runs.
//!
//! - Per-packet cost in the kernel (BPF_PROG_TEST_RUN, many repetitions) for each path,
//!   next to an XDP program that only passes (the floor), with 10, 1,000 and 100,000 deny
//!   CIDRs loaded; the deny path with events on (default budget) and off.
//! - Control plane: time to parse and validate, then to write and switch in, a policy of
//!   1,000, 100,000 and 1,000,000 deny CIDRs.
//!
//! Writes a Markdown table to stdout and to `<out>/bench.md`, and the numbers to
//! `<out>/bench.json`. `--smoke` runs a few seconds' worth, for the tests.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use portcullis::{loader::FLOOR_PROGRAM, policy};
use portcullis_tests::{
    frames::{ETH_P_8021Q, FrameSpec, non_ip},
    harness::Harness,
};
use serde_json::{Value, json};

struct Options {
    smoke: bool,
    out: PathBuf,
}

fn options() -> Result<Options> {
    let mut options = Options {
        smoke: false,
        out: PathBuf::from("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => options.smoke = true,
            "--out" => options.out = PathBuf::from(args.next().context("--out needs a directory")?),
            other => bail!("unknown argument {other}; expected --smoke or --out DIR"),
        }
    }
    Ok(options)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A policy with `cidrs` deny /24s (IPv4, spread over 1.0.0.0-99.255.255.0), an allow entry,
/// a rate limit that always has tokens and one that never does.
fn policy_text(cidrs: usize, events_per_second: Option<u32>) -> String {
    let mut text = String::with_capacity(cidrs * 20 + 512);
    text.push_str("allow: [192.0.2.0/24]\ndeny:\n  - 10.0.0.0/8\n  - 2001:db8:bad::/48\n");
    for i in 0..cidrs.saturating_sub(1) {
        let _ = writeln!(
            text,
            "  - {}.{}.{}.0/24",
            1 + i / 65536 % 99,
            i / 256 % 256,
            i % 256
        );
    }
    text.push_str(
        "rate_limits:\n  - {name: roomy, protocol: udp, ports: [53], rate: 1000000000/s, burst: 1000000000}\n  - {name: tight, protocol: udp, ports: [5353], rate: 1/h, burst: 1}\n",
    );
    if let Some(per_second) = events_per_second {
        let _ = writeln!(text, "events: {{per_second: {per_second}}}");
    }
    let _ = writeln!(text, "capacity: {{cidrs: {}}}", cidrs.max(1000) + 16);
    text
}

fn paths() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("non-IP pass (ARP)", non_ip(0x0806, 28)),
        ("allow hit", FrameSpec::udp("192.0.2.7", 80).build()),
        ("deny hit", FrameSpec::udp("10.1.2.3", 80).build()),
        ("rate-limit pass", FrameSpec::udp("203.0.113.5", 53).build()),
        (
            "rate-limit drop",
            FrameSpec::udp("203.0.113.6", 5353).build(),
        ),
        ("no match", FrameSpec::udp("203.0.113.7", 80).build()),
        (
            "IPv6 deny hit",
            FrameSpec::udp("2001:db8:bad::1", 80).build(),
        ),
        ("IPv6 no match", FrameSpec::udp("2001:db8:1::1", 80).build()),
        (
            "802.1Q deny hit",
            FrameSpec::udp("10.1.2.3", 80).vlans(&[ETH_P_8021Q]).build(),
        ),
    ]
}

fn run() -> Result<()> {
    let options = options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load BPF programs and need root");
    }
    let (repeat, rounds, sizes, apply_sizes): (u32, usize, Vec<usize>, Vec<usize>) =
        if options.smoke {
            (1_000, 3, vec![10], vec![1_000])
        } else {
            (
                1_000_000,
                5,
                vec![10, 1_000, 100_000],
                vec![1_000, 100_000, 1_000_000],
            )
        };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Per-packet cost (BPF_PROG_TEST_RUN, {repeat} repetitions, median of {rounds})\n"
    );
    let _ = writeln!(
        md,
        "| path | {} | floor (XDP_PASS only) |",
        sizes
            .iter()
            .map(|s| format!("{s} CIDRs"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}---|", "---|".repeat(sizes.len()));

    let mut per_packet: Vec<Value> = Vec::new();
    let mut table: Vec<(String, Vec<f64>, f64)> = paths()
        .iter()
        .map(|(n, _)| (n.to_string(), vec![], 0.0))
        .collect();
    for &size in &sizes {
        let harness = Harness::new(&policy_text(size, None))?;
        // Spend the tight rule's only token so its frame measures the drop path.
        harness.xdp(&paths()[4].1)?;
        for (i, (name, frame)) in paths().iter().enumerate() {
            let ns = median(
                (0..rounds)
                    .map(|_| {
                        harness.programs.xdp_ns_per_run(
                            portcullis::loader::XDP_PROGRAM,
                            frame,
                            repeat,
                        )
                    })
                    .collect::<Result<_>>()?,
            );
            let floor = median(
                (0..rounds)
                    .map(|_| {
                        harness
                            .programs
                            .xdp_ns_per_run(FLOOR_PROGRAM, frame, repeat)
                    })
                    .collect::<Result<_>>()?,
            );
            table[i].1.push(ns);
            table[i].2 = floor;
            per_packet.push(json!({"path": name, "cidrs": size, "ns_per_packet": ns, "floor_ns_per_packet": floor}));
        }
    }
    for (name, values, floor) in &table {
        let cells: Vec<String> = values.iter().map(|ns| format!("{ns:.0} ns")).collect();
        let _ = writeln!(md, "| {name} | {} | {floor:.0} ns |", cells.join(" | "));
    }

    // Events: the deny path with the default budget against events off, same frame.
    let deny = FrameSpec::udp("10.1.2.3", 80).build();
    let mut events = Vec::new();
    for (label, per_second) in [
        ("events on (default budget)", None),
        ("events off", Some(0)),
    ] {
        let harness = Harness::new(&policy_text(10, per_second))?;
        let ns = median(
            (0..rounds)
                .map(|_| {
                    harness
                        .programs
                        .xdp_ns_per_run(portcullis::loader::XDP_PROGRAM, &deny, repeat)
                })
                .collect::<Result<_>>()?,
        );
        events.push(json!({"case": label, "ns_per_packet": ns}));
    }
    let _ = writeln!(
        md,
        "\n## Deny path with events on and off\n\n| case | ns per packet |\n|---|---|"
    );
    for e in &events {
        let _ = writeln!(
            md,
            "| {} | {:.0} ns |",
            e["case"].as_str().unwrap_or_default(),
            e["ns_per_packet"].as_f64().unwrap_or(0.0)
        );
    }

    // Control plane: parse + validate, then build, write and switch, for a new policy.
    let _ = writeln!(
        md,
        "\n## Applying a deny list (median of {rounds})\n\n| CIDRs | parse and validate | write and switch | total |\n|---|---|---|---|"
    );
    let mut applies = Vec::new();
    for &size in &apply_sizes {
        let text = policy_text(size, None);
        let mut harness = Harness::new(&policy_text(1, None).replace(
            "capacity: {cidrs: 1016}",
            &format!("capacity: {{cidrs: {}}}", size.max(1000) + 16),
        ))?;
        let mut parse = Vec::new();
        let mut write = Vec::new();
        for round in 0..rounds.min(3) {
            // Alternate between the big policy and a small one so every round writes it all.
            let started = Instant::now();
            let parsed = policy::parse(Path::new("bench.yaml"), &text)?;
            parse.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            harness.enforcer.apply(parsed)?;
            write.push(started.elapsed().as_secs_f64());
            if round + 1 < rounds.min(3) {
                let small = policy_text(1, None).replace(
                    "capacity: {cidrs: 1016}",
                    &format!("capacity: {{cidrs: {}}}", size.max(1000) + 16),
                );
                harness
                    .enforcer
                    .apply(policy::parse(Path::new("small.yaml"), &small)?)?;
            }
        }
        let (parse, write) = (median(parse), median(write));
        let _ = writeln!(
            md,
            "| {size} | {:.0} ms | {:.0} ms | {:.0} ms |",
            parse * 1e3,
            write * 1e3,
            (parse + write) * 1e3
        );
        applies.push(json!({"cidrs": size, "parse_s": parse, "write_s": write}));
    }

    print!("{md}");
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    std::fs::write(options.out.join("bench.md"), &md)?;
    let results = json!({
        "smoke": options.smoke,
        "repeat": repeat,
        "rounds": rounds,
        "per_packet": per_packet,
        "events": events,
        "apply": applies,
    });
    std::fs::write(
        options.out.join("bench.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "wrote {} and {}",
        options.out.join("bench.md").display(),
        options.out.join("bench.json").display()
    );
    Ok(())
}
