//! The `portcullis` commands that talk to a running agent: each sends one request on the
//! control socket and prints the answer for a person (or as JSON with `--json`).

use std::path::Path;

use serde_json::Value;

use crate::{
    control::{
        client::{self, ClientError},
        protocol::{ErrorKind, Request, Response},
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

fn call(socket: &Path, request: Request) -> Result<Value, CliError> {
    let Response {
        ok,
        error,
        message,
        result,
    } = client::call(socket, &request)?;
    if ok {
        return Ok(result);
    }
    Err(CliError::Agent {
        kind: error.unwrap_or(ErrorKind::Failed),
        message: message.unwrap_or_else(|| "the agent refused the request".into()),
    })
}

fn print_changes(result: &Value) {
    let changes = result["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("no changes");
    }
    const SHOWN: usize = 100;
    for change in changes.iter().take(SHOWN) {
        println!("  {}", change.as_str().unwrap_or_default());
    }
    if changes.len() > SHOWN {
        println!("  ... and {} more", changes.len() - SHOWN);
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}

/// Validates `file` here (so errors name the file and line), then applies it.
pub fn policy_apply(socket: &Path, file: &Path) -> Result<(), CliError> {
    let text = policy::read(file)?;
    policy::parse(file, &text)?;
    let origin = file.display().to_string();
    let result = call(socket, Request::PolicyApply { text, origin })?;
    println!("version {} in force", result["version"]);
    print_changes(&result);
    Ok(())
}

pub fn policy_diff(socket: &Path, file: &Path) -> Result<(), CliError> {
    let text = policy::read(file)?;
    policy::parse(file, &text)?;
    let result = call(socket, Request::PolicyDiff { text })?;
    print_changes(&result);
    Ok(())
}

pub fn policy_show(socket: &Path, json: bool) -> Result<(), CliError> {
    let result = call(socket, Request::PolicyShow)?;
    if json {
        print_json(&result);
        return Ok(());
    }
    println!(
        "version {} applied at {} by {}",
        result["version"],
        timestamp(&result["applied_at"]),
        result["origin"].as_str().unwrap_or_default()
    );
    if let Some(modes) = result["modes"].as_object().filter(|m| !m.is_empty()) {
        for (rule, mode) in modes {
            println!(
                "mode switched at run time: {rule} -> {}",
                mode.as_str().unwrap_or_default()
            );
        }
    }
    println!("---");
    print!("{}", result["text"].as_str().unwrap_or_default());
    println!("---\nkept versions:");
    for v in result["versions"].as_array().into_iter().flatten() {
        println!(
            "  {:>4}  {}  {}",
            v["version"],
            timestamp(&v["applied_at"]),
            v["origin"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

pub fn policy_rollback(socket: &Path, version: Option<u64>) -> Result<(), CliError> {
    let result = call(socket, Request::PolicyRollback { version })?;
    println!(
        "rolled back to version {}: version {} in force",
        result["rolled_back_to"], result["version"]
    );
    print_changes(&result);
    Ok(())
}

pub fn mode(socket: &Path, rule: String, mode: Mode) -> Result<(), CliError> {
    let result = call(socket, Request::Mode { rule, mode })?;
    println!("version {} in force", result["version"]);
    print_changes(&result);
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
    let result = call(
        socket,
        Request::Block {
            cidr,
            ttl_secs,
            reason,
        },
    )?;
    match ttl_secs {
        Some(secs) => println!(
            "blocked {} for {secs} s",
            result["cidr"].as_str().unwrap_or_default()
        ),
        None => println!(
            "blocked {} until unblocked",
            result["cidr"].as_str().unwrap_or_default()
        ),
    }
    Ok(())
}

pub fn unblock(socket: &Path, cidr: String) -> Result<(), CliError> {
    let result = call(socket, Request::Unblock { cidr })?;
    println!("unblocked {}", result["cidr"].as_str().unwrap_or_default());
    Ok(())
}

pub fn bans(socket: &Path, json: bool) -> Result<(), CliError> {
    let result = call(socket, Request::Bans)?;
    if json {
        print_json(&result);
        return Ok(());
    }
    let bans = result["bans"].as_array().cloned().unwrap_or_default();
    if bans.is_empty() {
        println!("no bans");
        return Ok(());
    }
    println!(
        "{:<44} {:<11} {:<20} {:>10}  reason",
        "cidr", "kind", "rule", "time left"
    );
    for ban in bans {
        let left = match ban["seconds_left"].as_u64() {
            Some(secs) => format!("{secs} s"),
            None => "until lifted".into(),
        };
        println!(
            "{:<44} {:<11} {:<20} {:>10}  {}",
            ban["cidr"].as_str().unwrap_or_default(),
            ban["kind"].as_str().unwrap_or_default(),
            ban["rule"].as_str().unwrap_or_default(),
            left,
            ban["reason"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

pub fn stats(socket: &Path, json: bool) -> Result<(), CliError> {
    let result = call(socket, Request::Stats)?;
    if json {
        print_json(&result);
        return Ok(());
    }
    // serde_json values ignore width and alignment, so numbers are taken out first.
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    println!("{:<14} {:>14} {:>14}", "reason", "packets", "shadow");
    for reason in agent_common::Reason::ALL.map(agent_common::Reason::name) {
        let (packets, shadow) = (n(&result["verdicts"][reason]), n(&result["shadow"][reason]));
        println!("{reason:<14} {packets:>14} {shadow:>14}");
    }
    let malformed: Vec<String> = agent_common::MalformedCause::ALL
        .iter()
        .map(|cause| (cause.name(), n(&result["malformed"][cause.name()])))
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    if !malformed.is_empty() {
        println!("malformed by cause: {}", malformed.join(", "));
    }
    if let Some(rules) = result["rules"].as_object().filter(|r| !r.is_empty()) {
        println!(
            "\n{:<24} {:>12} {:>12} {:>12}",
            "rule", "passed", "dropped", "shadowed"
        );
        for (name, c) in rules {
            let (passed, dropped, shadowed) =
                (n(&c["passed"]), n(&c["dropped"]), n(&c["shadowed"]));
            println!("{name:<24} {passed:>12} {dropped:>12} {shadowed:>12}");
        }
    }
    let events = &result["events"];
    println!(
        "\nevents: {} written, {} suppressed by the budget, {} lost (ring full)",
        events["written"], events["suppressed"], events["lost"]
    );
    let maps = &result["maps"];
    println!(
        "maps: {} allow, {} deny, {} bans, {} buckets (capacity: {} cidrs, {} bans, {} sources)",
        maps["allow"],
        maps["deny"],
        maps["bans"],
        maps["buckets"],
        maps["capacity"]["cidrs"],
        maps["capacity"]["bans"],
        maps["capacity"]["sources"]
    );
    Ok(())
}

pub fn status(socket: &Path, json: bool) -> Result<(), CliError> {
    let result = call(socket, Request::Status)?;
    if json {
        print_json(&result);
        return Ok(());
    }
    println!(
        "policy version {} from {} (pins in {})",
        result["policy_version"],
        result["policy_file"].as_str().unwrap_or_default(),
        result["pin_dir"].as_str().unwrap_or_default()
    );
    for iface in result["interfaces"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<10} program id {}",
            iface["interface"].as_str().unwrap_or_default(),
            iface["hook"].as_str().unwrap_or_default(),
            iface["program_id"]
        );
    }
    println!(
        "uptime {} s, agent {}",
        result["uptime_secs"],
        result["agent_version"].as_str().unwrap_or_default()
    );
    Ok(())
}

pub fn follow_events(socket: &Path) -> Result<(), CliError> {
    client::follow_events(socket, std::io::stdout())?;
    Ok(())
}

fn timestamp(secs: &Value) -> String {
    let secs = secs.as_u64().unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
