//! The `portcullis` commands that talk to a running agent: each sends one request on the
//! control socket and prints the answer for a person (or as JSON with `--json`).

use std::path::Path;

use agent_common::{MalformedCause, Reason};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    control::{
        client::{self, ClientError},
        protocol::{
            Applied, BanKind, BanList, Blocked, Changes, CrowdsecStatus, ErrorKind, ListStatus,
            PolicyShown, Request, Stats, Status, Unblocked,
        },
    },
    policy::{self, Mode, PolicyError},
};

/// A command that did not succeed, with what to tell the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{message}")]
    Agent { kind: ErrorKind, message: String },
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// True for errors in what the user gave (a policy, a duration): exit code 64.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            CliError::Policy(_)
                | CliError::Usage(_)
                | CliError::Agent {
                    kind: ErrorKind::InvalidPolicy | ErrorKind::BadRequest,
                    ..
                }
        )
    }
}

/// Sends `request` and returns its typed result, or the agent's refusal.
fn call<T: DeserializeOwned>(socket: &Path, request: Request) -> Result<T, CliError> {
    let response = client::call(socket, &request)?;
    if !response.ok {
        return Err(CliError::Agent {
            kind: response.error.unwrap_or(ErrorKind::Failed),
            message: response
                .message
                .unwrap_or_else(|| "the agent refused the request".into()),
        });
    }
    response
        .result()
        .map_err(|source| CliError::Client(ClientError::Protocol { source }))
}

fn print_changes(changes: &[String]) {
    if changes.is_empty() {
        println!("no changes");
    }
    const SHOWN: usize = 100;
    for change in changes.iter().take(SHOWN) {
        println!("  {change}");
    }
    if changes.len() > SHOWN {
        println!("  ... and {} more", changes.len() - SHOWN);
    }
}

/// On stderr, so scripts reading the changes are not confused, and always shown.
fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string(value).expect("results serialize")
    );
}

/// Validates `file` here (so errors name the file and line), then applies it.
pub fn policy_apply(socket: &Path, file: &Path) -> Result<(), CliError> {
    let text = policy::read(file)?;
    policy::parse(file, &text)?;
    let origin = file.display().to_string();
    let applied: Applied = call(socket, Request::PolicyApply { text, origin })?;
    println!("version {} in force", applied.version);
    print_changes(&applied.changes);
    print_warnings(&applied.warnings);
    Ok(())
}

pub fn policy_diff(socket: &Path, file: &Path) -> Result<(), CliError> {
    let text = policy::read(file)?;
    policy::parse(file, &text)?;
    let diff: Changes = call(socket, Request::PolicyDiff { text })?;
    print_changes(&diff.changes);
    Ok(())
}

pub fn policy_show(socket: &Path, json: bool) -> Result<(), CliError> {
    let shown: PolicyShown = call(socket, Request::PolicyShow)?;
    if json {
        print_json(&shown);
        return Ok(());
    }
    println!(
        "version {} applied at {} by {}",
        shown.version,
        timestamp(shown.applied_at),
        shown.origin
    );
    for (rule, mode) in &shown.modes {
        println!("mode switched at run time: {rule} -> {}", mode.name());
    }
    println!("---");
    print!("{}", shown.text);
    println!("---\nkept versions:");
    for v in &shown.versions {
        println!(
            "  {:>4}  {}  {}",
            v.version,
            timestamp(v.applied_at),
            v.origin
        );
    }
    Ok(())
}

pub fn policy_rollback(socket: &Path, version: Option<u64>) -> Result<(), CliError> {
    let applied: Applied = call(socket, Request::PolicyRollback { version })?;
    println!(
        "rolled back to version {}: version {} in force",
        applied.rolled_back_to.unwrap_or_default(),
        applied.version
    );
    print_changes(&applied.changes);
    print_warnings(&applied.warnings);
    Ok(())
}

pub fn mode(socket: &Path, rule: String, mode: Mode) -> Result<(), CliError> {
    let applied: Applied = call(socket, Request::Mode { rule, mode })?;
    println!("version {} in force", applied.version);
    print_changes(&applied.changes);
    print_warnings(&applied.warnings);
    Ok(())
}

pub fn block(
    socket: &Path,
    cidr: String,
    ttl: Option<&str>,
    reason: Option<String>,
) -> Result<(), CliError> {
    let ttl_secs = match ttl {
        None => None,
        Some(text) => Some(
            policy::units::parse_duration(text)
                .map_err(|e| CliError::Usage(e.to_string()))?
                .div_ceil(1_000_000_000),
        ),
    };
    let blocked: Blocked = call(
        socket,
        Request::Block {
            cidr,
            ttl_secs,
            reason,
        },
    )?;
    match blocked.ttl_secs {
        Some(secs) => println!("blocked {} for {secs} s", blocked.cidr),
        None => println!("blocked {} until unblocked", blocked.cidr),
    }
    Ok(())
}

pub fn unblock(socket: &Path, cidr: String) -> Result<(), CliError> {
    let unblocked: Unblocked = call(socket, Request::Unblock { cidr })?;
    println!("unblocked {}", unblocked.cidr);
    Ok(())
}

/// Decisions listed one per line by a plain `bans`; beyond this (a community blocklist)
/// they are summed up by origin, and `--kind decision` or `--covering` lists them.
const DECISIONS_LISTED: usize = 100;

pub fn bans(
    socket: &Path,
    kind: Option<BanKind>,
    covering: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let filtered = kind.is_some() || covering.is_some();
    let mut list: BanList = call(socket, Request::Bans { kind, covering })?;
    if json {
        print_json(&list);
        return Ok(());
    }
    if list.bans.is_empty() {
        println!("no bans");
        return Ok(());
    }
    let decisions = list
        .bans
        .iter()
        .filter(|b| b.kind == BanKind::Decision)
        .count();
    let summary = (!filtered && decisions > DECISIONS_LISTED).then(|| {
        let mut by_origin: std::collections::BTreeMap<&str, usize> = Default::default();
        for ban in list.bans.iter().filter(|b| b.kind == BanKind::Decision) {
            *by_origin.entry(ban.rule.as_str()).or_default() += 1;
        }
        let by_origin: Vec<String> = by_origin
            .iter()
            .map(|(origin, count)| format!("{origin} {count}"))
            .collect();
        format!(
            "{decisions} decisions ({}): `bans --kind decision` lists them, `bans --covering ADDRESS` finds one",
            by_origin.join(", ")
        )
    });
    if summary.is_some() {
        list.bans.retain(|b| b.kind != BanKind::Decision);
    }
    println!(
        "{:<44} {:<11} {:<20} {:<8} {:>12}  reason",
        "cidr", "kind", "rule", "mode", "time left"
    );
    for ban in &list.bans {
        let left = match ban.seconds_left {
            Some(secs) => format!("{secs} s"),
            None => "until lifted".into(),
        };
        println!(
            "{:<44} {:<11} {:<20} {:<8} {:>12}  {}",
            ban.cidr,
            ban.kind.name(),
            ban.rule,
            ban.mode.name(),
            left,
            ban.reason.as_deref().unwrap_or_default()
        );
    }
    if let Some(summary) = summary {
        println!("{summary}");
    }
    Ok(())
}

pub fn stats(socket: &Path, json: bool) -> Result<(), CliError> {
    let stats: Stats = call(socket, Request::Stats)?;
    if json {
        print_json(&stats);
        return Ok(());
    }
    let count = |counts: &std::collections::BTreeMap<String, u64>, name: &str| {
        counts.get(name).copied().unwrap_or(0)
    };
    println!("{:<14} {:>14} {:>14}", "reason", "packets", "shadow");
    for reason in Reason::ALL.map(Reason::name) {
        let (packets, shadow) = (count(&stats.verdicts, reason), count(&stats.shadow, reason));
        println!("{reason:<14} {packets:>14} {shadow:>14}");
    }
    let malformed: Vec<String> = MalformedCause::ALL
        .iter()
        .map(|cause| (cause.name(), count(&stats.malformed, cause.name())))
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    if !malformed.is_empty() {
        println!("malformed by cause: {}", malformed.join(", "));
    }
    if !stats.rules.is_empty() {
        println!(
            "\n{:<24} {:>12} {:>12} {:>12} {:>12}",
            "rule", "passed", "dropped", "shadowed", "responses"
        );
        for (name, c) in &stats.rules {
            println!(
                "{name:<24} {:>12} {:>12} {:>12} {:>12}",
                c.passed, c.dropped, c.shadowed, c.responses
            );
        }
    }
    let events = &stats.events;
    println!(
        "\nevents: {} written, {} suppressed by the budget, {} lost (ring full)",
        events.written, events.suppressed, events.lost
    );
    let maps = &stats.maps;
    println!(
        "maps: {} allow, {} deny, {} bans, {} buckets, {} rules (capacity: {} cidrs, {} bans, {} sources, {} rules)",
        maps.allow,
        maps.deny,
        maps.bans,
        maps.buckets,
        maps.rules,
        maps.capacity.cidrs,
        maps.capacity.bans,
        maps.capacity.sources,
        maps.capacity.rules
    );
    Ok(())
}

pub fn status(socket: &Path, json: bool) -> Result<(), CliError> {
    let status: Status = call(socket, Request::Status)?;
    if json {
        print_json(&status);
        return Ok(());
    }
    println!(
        "policy version {} from {} (pins in {})",
        status.policy_version, status.policy_file, status.pin_dir
    );
    for iface in &status.interfaces {
        println!(
            "  {:<16} {:<10} program id {}",
            iface.interface, iface.hook, iface.program_id
        );
    }
    if !status.ready {
        println!("not ready: {}", status.problems.join("; "));
    }
    if let Some(error) = &status.policy_file_error {
        println!(
            "the policy file is not in force, version {} is: {error}",
            status.policy_version
        );
    }
    if let Some(crowdsec) = &status.crowdsec {
        print_crowdsec(crowdsec);
    }
    for list in &status.lists {
        print_list(list);
    }
    println!(
        "uptime {} s, agent {}",
        status.uptime_secs, status.agent_version
    );
    Ok(())
}

fn print_list(list: &ListStatus) {
    let read = match (list.read_unix, list.from_cache) {
        (None, _) => "no copy yet".to_string(),
        (Some(at), false) => format!("read {}", timestamp(at)),
        (Some(at), true) => format!("cached copy fetched {}", timestamp(at)),
    };
    println!("{}: {} entries, {read}", list.rule, list.entries);
    if let Some(error) = &list.error {
        let since = list.failing_since_unix.map(timestamp).unwrap_or_default();
        println!("  failing since {since}: {error}");
    }
    if list.bad_lines > 0 {
        println!(
            "  {} bad lines skipped: {}",
            list.bad_lines,
            list.bad_lines_shown.join("; ")
        );
    }
    if list.duplicates + list.covered_by_allow > 0 {
        println!(
            "  left out: {} already listed, {} inside an allow entry",
            list.duplicates, list.covered_by_allow
        );
    }
    if let Some(why) = &list.not_applied {
        println!("  not applied: {why}");
    }
}

fn print_crowdsec(crowdsec: &CrowdsecStatus) {
    let decisions: usize = crowdsec.decisions.values().sum();
    let by_origin: Vec<String> = crowdsec
        .decisions
        .iter()
        .map(|(origin, n)| format!("{n} {origin}"))
        .collect();
    println!(
        "crowdsec {}: {decisions} decisions enforced ({}), {} pulls, {} failed",
        crowdsec.lapi_url,
        if by_origin.is_empty() {
            "none".to_string()
        } else {
            by_origin.join(", ")
        },
        crowdsec.pulls,
        crowdsec.pull_errors
    );
    match (crowdsec.stale_since_unix, &crowdsec.last_error) {
        (Some(since), Some(error)) => println!(
            "  stale since {}: the last pull failed: {error}; the decisions in force stay",
            timestamp(since)
        ),
        (Some(since), None) => println!("  stale since {} (no pull yet)", timestamp(since)),
        (None, _) => {
            if let Some(at) = crowdsec.last_success_unix {
                println!("  in sync, last pull {}", timestamp(at));
            }
        }
    }
    if crowdsec.over_capacity > 0 {
        println!(
            "  {} decisions not enforced: the decision maps are full (raise capacity.decisions)",
            crowdsec.over_capacity
        );
    }
    if crowdsec.bans_shared > 0 || crowdsec.share_errors > 0 {
        println!(
            "  {} bans of this node shared, {} posts failed{}",
            crowdsec.bans_shared,
            crowdsec.share_errors,
            crowdsec
                .last_share_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (last: {e})"))
        );
    }
    if !crowdsec.ignored.is_empty() {
        let ignored: Vec<String> = crowdsec
            .ignored
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        println!("  not enforced: {}", ignored.join(", "));
    }
}

pub fn follow_events(socket: &Path) -> Result<(), CliError> {
    client::follow_events(socket, std::io::stdout())?;
    Ok(())
}

fn timestamp(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
