//! CrowdSec: the time from `cscli decisions import` of a community blocklist's worth of
//! decisions to the last one enforced, and the memory before and after, for Portcullis and
//! for CrowdSec's own firewall bouncer (nftables) following the same Local API.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portcullis_tests::{
    agent::{Agent, rss_kib},
    crowdsec::{FirewallBouncer, LocalApi},
    flood::{Flood, Generator, Sources, udp_frame},
    netns::{NetnsPair, in_ns},
};
use serde_json::{Value, json};

use crate::{Scale, flood::FLOOD_PORT, median};

/// Decisions imported at once (a smoke run imports fewer).
const DECISIONS: usize = 100_000;
const SMOKE_DECISIONS: usize = 1_000;
/// How long after the import each enforcer is given to enforce it all; what it holds then
/// is reported (CrowdSec's firewall bouncer never resyncs, and keeps what it missed out).
const DEADLINE: Duration = Duration::from_secs(90);
const SMOKE_DEADLINE: Duration = Duration::from_secs(30);
/// The imported decisions are the addresses from 100.64.0.0 on.
const FIRST_DECISION: u32 = 0x6440_0000;

/// `cscli decisions import` of `file`, again if the Local API's sqlite database was busy
/// (the bouncers' pulls read it meanwhile): a decision imported twice is one prefix for
/// both enforcers, so what the first attempt wrote does no harm.
fn import(lapi: &LocalApi, file: &std::path::Path) -> Result<()> {
    let file = file.display().to_string();
    let mut attempt = 0;
    loop {
        match lapi.cscli(&["decisions", "import", "-i", &file]) {
            Err(e) if attempt < 10 && e.to_string().contains("database is locked") => {
                attempt += 1;
                eprintln!("bench: the Local API's database was busy; importing again");
                std::thread::sleep(Duration::from_secs(1));
            }
            other => return other.map(|_| ()),
        }
    }
}

/// Decisions the agent holds, by its `status`.
fn enforced(agent: &Agent) -> u64 {
    agent.status().map_or(0, |status| {
        status["crowdsec"]["decisions"]
            .as_object()
            .map_or(0, |by_origin| {
                by_origin.values().filter_map(Value::as_u64).sum()
            })
    })
}

/// A source both enforcers ban: an imported address the bouncer's set holds (it may not
/// hold them all), or `None`.
fn banned_by_both(bouncer: &FirewallBouncer, count: usize) -> Option<Ipv4Addr> {
    (0..50)
        .map(|i| Ipv4Addr::from(FIRST_DECISION + (i * count / 50) as u32))
        .find(|&addr| bouncer.holds(addr))
}

/// Frames per second the server side handles from one banned source: one round of
/// `scale.flood_time`, the median of `scale.flood_rounds`, and the share not dropped.
fn banned_flood(
    generator: &Generator,
    pair: &NetnsPair,
    frame: &[u8],
    scale: &Scale,
) -> Result<(f64, f64)> {
    let flood = |limit| {
        generator.send(
            &pair.client_ns,
            &pair.client_if,
            &Flood {
                frame,
                sources: Sources::One,
                frames: u64::MAX,
                limit,
                per_second: None,
                realtime: false,
            },
        )
    };
    flood(scale.flood_time / 4)?;
    let (mut rates, mut passed_shares) = (Vec::new(), Vec::new());
    for _ in 0..scale.flood_rounds {
        let (rx, no_ports) = (pair.server_rx_packets()?, pair.server_udp_no_ports()?);
        let sent = flood(scale.flood_time)?;
        let received = pair.server_rx_packets()? - rx;
        let passed = pair.server_udp_no_ports()? - no_ports;
        rates.push(received as f64 / sent.elapsed.as_secs_f64());
        passed_shares.push(passed as f64 / received.max(1) as f64);
    }
    Ok((median(rates), median(passed_shares)))
}

pub fn run(scale: &Scale) -> Result<(String, Value)> {
    let count = if scale.smoke {
        SMOKE_DECISIONS
    } else {
        DECISIONS
    };
    let pair = NetnsPair::new()?;
    let lapi = LocalApi::start(&pair.server_ns, "127.0.0.1", 8080)?;
    let key = lapi.bouncer_key_file("portcullis")?.display().to_string();
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "")?;
    let agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &[
            "--crowdsec-url",
            &lapi.url,
            "--crowdsec-key-file",
            &key,
            "--xdp-mode",
            "native",
        ],
    )?;
    // CrowdSec's own firewall bouncer on the same Local API, pulling as often.
    let bouncer_key = std::fs::read_to_string(lapi.bouncer_key_file("firewall")?)?;
    let bouncer = FirewallBouncer::start(&pair.server_ns, &lapi.url, bouncer_key.trim(), 1)?;
    let started = Instant::now();
    while agent
        .status()
        .is_none_or(|s| s["crowdsec"]["pulls"].as_u64() < Some(1))
    {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the agent did not pull the Local API within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let bouncer_pid = bouncer.pid().context("the bouncer runs")?;
    let rss_before = (agent.rss_kib()?, rss_kib(bouncer_pid)?);
    // Distinct addresses in 100.64.0.0/10, as `cscli decisions import` takes them.
    let mut csv = String::from("duration,scope,value\n");
    for i in 0..count as u32 {
        let addr = Ipv4Addr::from(FIRST_DECISION + i);
        let _ = writeln!(csv, "4h,ip,{addr}");
    }
    let file = dir.path().join("decisions.csv");
    std::fs::write(&file, csv)?;
    let started = Instant::now();
    import(&lapi, &file)?;
    let imported = started.elapsed();
    let deadline = if scale.smoke {
        SMOKE_DEADLINE
    } else {
        DEADLINE
    };
    let (mut agent_done, mut bouncer_done) = (None, None);
    let (mut agent_held, mut bouncer_held) = (0, 0);
    let mut polls: u64 = 0;
    while (agent_done.is_none() || bouncer_done.is_none()) && started.elapsed() < deadline {
        if agent_done.is_none() {
            agent_held = enforced(&agent) as usize;
            if agent_held >= count {
                agent_done = Some(started.elapsed());
            }
        }
        // Listing a large nftables set costs CPU: once a second.
        if bouncer_done.is_none() && polls.is_multiple_of(20) {
            bouncer_held = bouncer.set_size().unwrap_or(0);
            if bouncer_held >= count {
                bouncer_done = Some(started.elapsed());
            }
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    if agent_done.is_none() {
        bail!(
            "Portcullis enforces {agent_held} of {count} decisions {deadline:?} after the import"
        );
    }
    let outcome = |done: Option<Duration>, held: usize| match done {
        Some(took) => format!("{:.1} s", took.as_secs_f64()),
        None => format!("not all: {held} of {count} after {} s", deadline.as_secs()),
    };
    let rss_after = (agent.rss_kib()?, rss_kib(bouncer_pid)?);
    let mib = |kib: u64| kib as f64 / 1024.0;

    // A flood from a source both ban: Portcullis drops it in XDP; then, the agent stopped
    // (its programs detached), the bouncer's nftables set drops it in the input hook.
    let source = banned_by_both(&bouncer, count)
        .context("the bouncer's set holds none of the sampled imported addresses")?;
    // As in the flood section: GRO on (veth takes the generator's frames only with NAPI
    // on, which XDP also turns on) and threaded NAPI, so the receiving side works in its
    // own kernel thread.
    in_ns(
        &pair.server_ns,
        &["ethtool", "-K", &pair.server_if, "gro", "on"],
    )?;
    let threaded = format!("echo 1 > /sys/class/net/{}/threaded", pair.server_if);
    in_ns(&pair.server_ns, &["sh", "-c", &threaded])?;
    let generator = Generator::new()?;
    let frame = udp_frame(pair.server_mac()?, source, FLOOD_PORT)?;
    // Nothing else busy during the floods (the bouncer goes on retrying what it missed):
    // the Local API stopped (Portcullis keeps its decisions, stale) and the bouncer
    // frozen (its nftables set stays in the kernel, where the dropping happens).
    let mut lapi = lapi;
    lapi.stop();
    // SAFETY: signalling a process this run started.
    unsafe { libc::kill(bouncer_pid as i32, libc::SIGSTOP) };
    let floods = (|| -> Result<_> {
        let decision = banned_flood(&generator, &pair, &frame, scale)?;
        // The same addresses as a deny list (an IP list file), judged before decisions:
        // the blocklist enforced without CrowdSec, in this same bed.
        let mut listed = String::with_capacity(count * 16);
        for i in 0..count as u32 {
            let _ = writeln!(listed, "{}", Ipv4Addr::from(FIRST_DECISION + i));
        }
        let list = dir.path().join("blocklist.txt");
        std::fs::write(&list, listed)?;
        std::fs::write(
            &policy,
            format!("deny:\n  - {{list: {}}}\n", list.display()),
        )?;
        let applied = agent.cli(&["policy", "apply", &policy.display().to_string()]);
        if !applied.status.success() {
            bail!("policy apply: {}", String::from_utf8_lossy(&applied.stderr));
        }
        let deny = banned_flood(&generator, &pair, &frame, scale)?;
        let mut agent = agent;
        agent.stop()?;
        let bouncer = banned_flood(&generator, &pair, &frame, scale)?;
        Ok((decision, deny, bouncer))
    })();
    // SAFETY: as above; the bouncer must run again to stop when dropped.
    unsafe { libc::kill(bouncer_pid as i32, libc::SIGCONT) };
    let ((portcullis_pps, portcullis_passed), (deny_pps, _), (bouncer_pps, bouncer_passed)) =
        floods?;
    if portcullis_passed > 0.01 || bouncer_passed > 0.01 {
        bail!(
            "the banned source got through: {:.1}% past Portcullis, {:.1}% past the bouncer",
            portcullis_passed * 100.0,
            bouncer_passed * 100.0
        );
    }
    let flood_md = format!(
        "\nA flood of 64-byte UDP frames from one banned source ({source}, held by both), \
         {} rounds of {:.0} s, median; receiving side in its own NAPI thread as in the flood \
         section; the Local API stopped and the bouncer frozen meanwhile, so that only the \
         dropping works:\n\n\
         | enforcer | frames/s handled | ratio |\n|---|---|---|\n\
         | Portcullis (XDP, decision map) | {:.2} M | {:.2}x |\n\
         | Portcullis (XDP, the same {count} addresses as a deny list file) | {:.2} M | {:.2}x |\n\
         | crowdsec-firewall-bouncer (nftables set, input hook) | {:.2} M | 1.00x |\n",
        scale.flood_rounds,
        scale.flood_time.as_secs_f64(),
        portcullis_pps / 1e6,
        portcullis_pps / bouncer_pps,
        deny_pps / 1e6,
        deny_pps / bouncer_pps,
        bouncer_pps / 1e6,
    );
    let md = format!(
        "\n## CrowdSec: importing decisions\n\n\
         `cscli decisions import` of {count} Ip ban decisions into a Local API (Debian's \
         crowdsec, sqlite) that Portcullis (default 1 s pull interval) and Debian's \
         crowdsec-firewall-bouncer (nftables mode, its pull interval set to 1 s as well; its \
         default is 10 s) both follow, on the same node; the import returned after {:.1} s. \
         Enforced: Portcullis's status counts them all (each is in the kernel's map by then), \
         the bouncer's nftables set holds them all (polled once a second with `nft -j list \
         set`, so its time is to the second).\n\n\
         | enforcer | import to the last enforced | RSS before | RSS after |\n\
         |---|---|---|---|\n\
         | Portcullis | {} | {:.1} MiB | {:.1} MiB |\n\
         | crowdsec-firewall-bouncer (nftables) | {} | {:.1} MiB | {:.1} MiB |\n",
        imported.as_secs_f64(),
        outcome(agent_done, agent_held),
        mib(rss_before.0),
        mib(rss_after.0),
        outcome(bouncer_done, bouncer_held),
        mib(rss_before.1),
        mib(rss_after.1),
    ) + &flood_md;
    Ok((
        md,
        json!({
            "decisions": count,
            "import_s": imported.as_secs_f64(),
            "import_to_enforced_s": agent_done.map(|d| d.as_secs_f64()),
            "bouncer_import_to_enforced_s": bouncer_done.map(|d| d.as_secs_f64()),
            "bouncer_held": bouncer_held,
            "rss_before_kib": rss_before.0,
            "rss_after_kib": rss_after.0,
            "bouncer_rss_before_kib": rss_before.1,
            "bouncer_rss_after_kib": rss_after.1,
            "banned_flood_pps": portcullis_pps,
            "denied_flood_pps": deny_pps,
            "bouncer_banned_flood_pps": bouncer_pps,
        }),
    ))
}
