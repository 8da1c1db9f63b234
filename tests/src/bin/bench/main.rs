//! `cargo xtask bench`: what Portcullis costs and how much it handles, measured side by side
//! with a baseline in the same run. Every figure is a median over repeated runs.
//!
//! - `per_packet`: cost in the kernel per path, next to an XDP program that only passes;
//! - `flood`: packets per second handled over a veth pair against iptables and nftables;
//! - `legit`: HTTP rate and latency for a legitimate client, alone and during a flood;
//! - `login_flood`: a login flood from many addresses against an API, with NGINX's
//!   `limit_req` and with a Portcullis route enforcing the same limit;
//! - `control_plane`: apply times, file edit to enforcement, agent memory;
//! - `crowdsec`: `cscli decisions import` to enforcement, and the agent's memory holding them.
//!
//! Writes a Markdown report to stdout and to `<out>/bench.md`, and the numbers to
//! `<out>/bench.json`. `--smoke` runs a few seconds' worth of each, for the tests.

mod control_plane;
mod crowdsec;
mod filters;
mod flood;
mod legit;
mod login;
mod per_packet;

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

/// How much of everything to run.
pub struct Scale {
    pub smoke: bool,
    /// BPF_PROG_TEST_RUN repetitions per measurement.
    pub repeat: u32,
    /// Measurements per figure; the median is reported.
    pub rounds: usize,
    /// Deny-list sizes for the per-packet cost.
    pub cidrs: Vec<usize>,
    /// Deny-list sizes for the apply times.
    pub apply_cidrs: Vec<usize>,
    /// How long each flood measurement runs, and how many (the flood figures vary most
    /// from run to run, so they get more).
    pub flood_time: Duration,
    pub flood_rounds: usize,
    /// How long each HTTP measurement runs.
    pub http_time: Duration,
}

impl Scale {
    fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                smoke,
                repeat: 1_000,
                rounds: 1,
                cidrs: vec![10],
                apply_cidrs: vec![1_000],
                flood_time: Duration::from_millis(300),
                flood_rounds: 1,
                http_time: Duration::from_secs(1),
            }
        } else {
            Self {
                smoke,
                repeat: 1_000_000,
                rounds: 3,
                cidrs: vec![10, 1_000, 100_000],
                apply_cidrs: vec![1_000, 100_000, 1_000_000],
                flood_time: Duration::from_secs(3),
                flood_rounds: 5,
                http_time: Duration::from_secs(5),
            }
        }
    }
}

struct Options {
    smoke: bool,
    out: PathBuf,
    /// Run only these sections, in the usual order (while working on one; several, to see
    /// one run after another in the same process as in a full run).
    only: Option<Vec<String>>,
}

fn options() -> Result<Options> {
    let (mut smoke, mut out, mut only) = (false, PathBuf::from("target/bench"), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--out" => out = PathBuf::from(args.next().context("--out needs a directory")?),
            "--only" => {
                let names = args.next().context("--only needs section names")?;
                only = Some(names.split(',').map(str::to_string).collect());
            }
            other => {
                bail!(
                    "unknown argument {other}; expected --smoke, --out DIR or --only SECTION[,SECTION...]"
                )
            }
        }
    }
    Ok(Options { smoke, out, only })
}

fn main() {
    portcullis_tests::interrupt::clean_up_on_signal();
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `i`th of the benchmarks' deny /24s, spread over 1.0.0.0-99.255.255.0.
pub fn bench_cidr(i: usize) -> String {
    format!("{}.{}.{}.0/24", 1 + i / 65536 % 99, i / 256 % 256, i % 256)
}

/// A policy with `cidrs` deny /24s (IPv4, spread over 1.0.0.0-99.255.255.0), an allow entry,
/// a rate limit that always has tokens and one that never does.
pub fn policy_text(cidrs: usize, events_per_second: Option<u32>) -> String {
    let mut text = String::with_capacity(cidrs * 20 + 512);
    text.push_str("allow: [192.0.2.0/24]\ndeny:\n  - 10.0.0.0/8\n  - 2001:db8:bad::/48\n");
    for i in 0..cidrs.saturating_sub(1) {
        let _ = writeln!(text, "  - {}", bench_cidr(i));
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

fn run() -> Result<()> {
    let Options { smoke, out, only } = options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load BPF programs and need root");
    }
    let scale = Scale::new(smoke);
    let mut md = String::new();
    let mut results = serde_json::Map::new();
    results.insert("smoke".into(), json!(smoke));
    type Section = fn(&Scale) -> Result<(String, serde_json::Value)>;
    let sections: [(&str, Section); 6] = [
        ("per_packet", per_packet::run),
        ("flood", flood::run),
        ("legit_under_flood", legit::run),
        ("login_flood", login::run),
        ("control_plane", control_plane::run),
        ("crowdsec", crowdsec::run),
    ];
    for wanted in only.iter().flatten() {
        if !sections.iter().any(|(name, _)| name == wanted) {
            let names: Vec<&str> = sections.iter().map(|(name, _)| *name).collect();
            bail!("no section {wanted}; the sections are {}", names.join(", "));
        }
    }
    // A section that fails is reported and the others still run and are written: a
    // failure late in a long run must not lose what was measured before it.
    let mut failed = Vec::new();
    for (name, section) in sections {
        if only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|o| o == name))
        {
            continue;
        }
        eprintln!("bench: {name}");
        match section(&scale) {
            Ok((text, value)) => {
                md.push_str(&text);
                md.push('\n');
                results.insert(name.into(), value);
            }
            Err(e) => {
                eprintln!("bench: {name} failed: {e:#}");
                let _ = writeln!(md, "\n## {name}: failed\n\n{e:#}\n");
                failed.push(name);
            }
        }
    }
    print!("{md}");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("bench.md"), &md)?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "wrote {} and {}",
        out.join("bench.md").display(),
        out.join("bench.json").display()
    );
    if !failed.is_empty() {
        bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}
