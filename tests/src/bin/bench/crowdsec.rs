//! CrowdSec: the time from `cscli decisions import` of a community blocklist's worth of
//! decisions to the last one enforced, and the agent's memory before and after.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portcullis_tests::{agent::Agent, crowdsec::LocalApi, netns::NetnsPair};
use serde_json::{Value, json};

use crate::Scale;

/// Decisions imported at once (a smoke run imports fewer).
const DECISIONS: usize = 100_000;
const SMOKE_DECISIONS: usize = 1_000;
/// The longest the whole import may take to be enforced.
const DEADLINE: Duration = Duration::from_secs(180);

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
        &["--crowdsec-url", &lapi.url, "--crowdsec-key-file", &key],
    )?;
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
    let rss_before = agent.rss_kib()?;
    // Distinct addresses in 100.64.0.0/10, as `cscli decisions import` takes them.
    let mut csv = String::from("duration,scope,value\n");
    for i in 0..count as u32 {
        let addr = std::net::Ipv4Addr::from(0x6440_0000 + i);
        let _ = writeln!(csv, "4h,ip,{addr}");
    }
    let file = dir.path().join("decisions.csv");
    std::fs::write(&file, csv)?;
    let started = Instant::now();
    lapi.cscli(&["decisions", "import", "-i", &file.display().to_string()])?;
    let imported = started.elapsed();
    while enforced(&agent) < count as u64 {
        if started.elapsed() > DEADLINE {
            bail!(
                "{} of {count} decisions enforced {DEADLINE:?} after the import",
                enforced(&agent)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let in_force = started.elapsed();
    let rss_after = agent.rss_kib()?;
    let md = format!(
        "\n## CrowdSec: importing decisions\n\n\
         `cscli decisions import` of {count} Ip ban decisions into a Local API (Debian's \
         crowdsec, sqlite) the agent follows with the default 1 s pull interval; enforced \
         when the agent's status counts them all (each is in the kernel's map by then).\n\n\
         | decisions | cscli import returned | import to the last enforced | agent RSS before | after |\n\
         |---|---|---|---|---|\n\
         | {count} | {:.1} s | {:.1} s | {:.1} MiB | {:.1} MiB |\n",
        imported.as_secs_f64(),
        in_force.as_secs_f64(),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
    );
    Ok((
        md,
        json!({
            "decisions": count,
            "import_s": imported.as_secs_f64(),
            "import_to_enforced_s": in_force.as_secs_f64(),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
        }),
    ))
}
