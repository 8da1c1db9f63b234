//! `portcullis stats`: counters read straight from the maps a running agent pinned.

use std::path::Path;

use agent_common::Reason;
use anyhow::{Context as _, Result};
use serde_json::json;

use crate::maps::KernelMaps;

pub fn print(pin_dir: &Path, as_json: bool) -> Result<()> {
    let maps_dir = crate::loader::maps_dir(pin_dir);
    let maps = KernelMaps::from_pins(&maps_dir).with_context(|| {
        format!(
            "reading the maps pinned in {} (is the agent running?)",
            maps_dir.display()
        )
    })?;
    let counters = maps.counters()?;
    let rules = maps.rule_counters(1..agent_common::MAX_RULES)?;
    if as_json {
        let mut verdicts = serde_json::Map::new();
        let mut shadow = serde_json::Map::new();
        for reason in Reason::ALL {
            verdicts.insert(reason.name().into(), counters.verdict(reason).into());
            shadow.insert(reason.name().into(), counters.shadowed(reason).into());
        }
        let rules: Vec<_> = rules
            .iter()
            .map(|(id, c)| json!({"id": id, "passed": c.passed, "dropped": c.dropped, "shadowed": c.shadowed}))
            .collect();
        let out = json!({
            "verdicts": verdicts,
            "shadow": shadow,
            "rules": rules,
            "events_written": counters.events_written,
            "events_suppressed": counters.events_suppressed,
            "events_lost": counters.events_lost,
            "bans_failed": counters.bans_failed,
        });
        println!("{out}");
        return Ok(());
    }
    println!("{:<14} {:>14} {:>14}", "reason", "packets", "shadow");
    for reason in Reason::ALL {
        println!(
            "{:<14} {:>14} {:>14}",
            reason.name(),
            counters.verdict(reason),
            counters.shadowed(reason)
        );
    }
    println!(
        "events: {} written, {} suppressed by the budget, {} lost (ring full)",
        counters.events_written, counters.events_suppressed, counters.events_lost
    );
    Ok(())
}
