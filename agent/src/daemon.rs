//! The running agent's state and what it does for each control request: versioned policy
//! applies (from the file or the CLI), rollbacks, mode switches, blocks, bans, stats and
//! status. Every policy change goes through `apply_version`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use agent_common::{BLOCK_RULE, MalformedCause, Reason};
use anyhow::Context as _;
use ipnet::IpNet;
use serde_json::{Value, json};

use crate::{
    control::protocol::{ErrorKind, Request, Response},
    enforcer::Enforcer,
    history::History,
    loader,
    maps::{MapsError, monotonic_now_ns},
    metrics,
    policy::{self, Mode, PolicyError, units},
};

/// What the agent attached, for `status`.
#[derive(Debug, Clone)]
pub struct Attached {
    pub iface: String,
    pub ifindex: u32,
    pub hook: &'static str,
    pub program_id: u32,
    pub pin_path: PathBuf,
}

pub struct Daemon {
    pub enforcer: Enforcer,
    history: History,
    policy_path: PathBuf,
    /// The policy file's text as last read, so a watch event without a change is ignored
    /// and a CLI apply is not undone by an unrelated event in the directory.
    file_text: String,
    /// Run-time mode switches on top of the current version's text.
    modes: BTreeMap<String, Mode>,
    block_reasons: BTreeMap<IpNet, String>,
    pub attached: Vec<Attached>,
    pin_dir: PathBuf,
    started: Instant,
    /// Applies refused or failed since the start (file reloads and CLI).
    apply_failures: u64,
}

/// An apply that did not happen, and why.
enum ApplyError {
    Invalid(PolicyError),
    UnknownRule(String),
    Failed(anyhow::Error),
}

impl ApplyError {
    fn response(self) -> Response {
        match self {
            ApplyError::Invalid(e) => Response::error(ErrorKind::InvalidPolicy, e.to_string()),
            ApplyError::UnknownRule(m) => Response::error(ErrorKind::UnknownRule, m),
            ApplyError::Failed(e) => Response::error(ErrorKind::Failed, format!("{e:#}")),
        }
    }
}

impl Daemon {
    /// Takes over an enforcer that already applied the text of `policy_path`, and records
    /// that text as a new version unless it is the version in force already.
    pub fn new(
        enforcer: Enforcer,
        mut history: History,
        policy_path: &Path,
        file_text: String,
        pin_dir: &Path,
    ) -> anyhow::Result<Self> {
        let same = history
            .current()
            .is_some_and(|v| v.text == file_text && v.modes.is_empty());
        if !same {
            history
                .record(
                    format!("file {}", policy_path.display()),
                    file_text.clone(),
                    BTreeMap::new(),
                    enforcer.rule_ids(),
                )
                .context("saving the policy history")?;
        } else {
            history
                .set_rule_ids(enforcer.rule_ids())
                .context("saving the policy history")?;
        }
        Ok(Self {
            enforcer,
            history,
            policy_path: policy_path.to_path_buf(),
            file_text,
            modes: BTreeMap::new(),
            block_reasons: BTreeMap::new(),
            attached: Vec::new(),
            pin_dir: pin_dir.to_path_buf(),
            started: Instant::now(),
            apply_failures: 0,
        })
    }

    pub fn version(&self) -> u64 {
        self.history.current().map_or(0, |v| v.number)
    }

    /// Validates `text` (+ `modes`), applies it, and records it as a new version. Returns
    /// the version number and the changes; an apply that changes nothing records nothing.
    fn apply_version(
        &mut self,
        text: &str,
        modes: BTreeMap<String, Mode>,
        origin: String,
        source_name: &Path,
    ) -> Result<(u64, Vec<String>), ApplyError> {
        let result = self.try_apply_version(text, modes, origin, source_name);
        if result.is_err() {
            self.apply_failures += 1;
        }
        result
    }

    fn try_apply_version(
        &mut self,
        text: &str,
        modes: BTreeMap<String, Mode>,
        origin: String,
        source_name: &Path,
    ) -> Result<(u64, Vec<String>), ApplyError> {
        let started = Instant::now();
        let policy = policy::parse(source_name, text).map_err(ApplyError::Invalid)?;
        let policy = policy
            .with_modes(&modes)
            .map_err(|e| ApplyError::UnknownRule(e.to_string()))?;
        let changes = policy::diff::diff(self.enforcer.policy(), &policy);
        let current = self.history.current();
        if changes.is_empty() && current.is_some_and(|v| v.text == text && v.modes == modes) {
            return Ok((self.version(), changes));
        }
        self.enforcer.apply(policy).map_err(ApplyError::Failed)?;
        self.modes = modes.clone();
        let version = self
            .history
            .record(
                origin.clone(),
                text.to_string(),
                modes,
                self.enforcer.rule_ids(),
            )
            .map_err(|e| ApplyError::Failed(e.into()))?;
        tracing::info!(
            version,
            origin,
            changes = changes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policy applied"
        );
        Ok((version, changes))
    }

    /// Called when the policy file's directory changed: re-reads the file and applies it
    /// if its text changed. Errors leave the policy in force untouched.
    pub fn reload_file(&mut self) -> anyhow::Result<Option<u64>> {
        let text = policy::read(&self.policy_path)?;
        if text == self.file_text {
            return Ok(None);
        }
        let origin = format!("file {}", self.policy_path.display());
        let path = self.policy_path.clone();
        // Remembered whether or not it applies: a broken edit is reported once, not again
        // on every unrelated event in the directory, and retried when the file changes.
        self.file_text = text.clone();
        match self.apply_version(&text, BTreeMap::new(), origin, &path) {
            Ok((version, _)) => Ok(Some(version)),
            Err(ApplyError::Invalid(e)) => Err(e.into()),
            Err(ApplyError::UnknownRule(m)) => Err(anyhow::anyhow!(m)),
            Err(ApplyError::Failed(e)) => Err(e),
        }
    }

    pub fn handle(&mut self, request: Request, uid: u32) -> Response {
        let by = format!("cli (uid {uid})");
        match request {
            Request::PolicyApply { text, origin } => {
                let source = PathBuf::from(&origin);
                match self.apply_version(&text, BTreeMap::new(), format!("{by}: {origin}"), &source)
                {
                    Ok((version, changes)) => {
                        Response::ok(json!({"version": version, "changes": changes}))
                    }
                    Err(e) => e.response(),
                }
            }
            Request::PolicyDiff { text } => match policy::parse(Path::new("<diff>"), &text) {
                Ok(new) => Response::ok(
                    json!({"changes": policy::diff::diff(self.enforcer.policy(), &new)}),
                ),
                Err(e) => Response::error(ErrorKind::InvalidPolicy, e.to_string()),
            },
            Request::PolicyShow => self.show(),
            Request::PolicyRollback { version } => self.rollback(version, &by),
            Request::Mode { rule, mode } => {
                let Some(current) = self.history.current().cloned() else {
                    return Response::error(ErrorKind::Failed, "no policy in force");
                };
                let mut modes = self.modes.clone();
                modes.insert(rule.clone(), mode);
                let origin = format!("{by}: mode {rule} {}", mode.name());
                let path = PathBuf::from(format!("version {}", current.number));
                match self.apply_version(&current.text, modes, origin, &path) {
                    Ok((version, changes)) => {
                        Response::ok(json!({"version": version, "changes": changes}))
                    }
                    Err(e) => e.response(),
                }
            }
            Request::Block {
                cidr,
                ttl_secs,
                reason,
            } => self.block(&cidr, ttl_secs, reason),
            Request::Unblock { cidr } => self.unblock(&cidr),
            Request::Bans => self.bans(),
            Request::Stats => self.stats(),
            Request::Status => self.status(),
            Request::Events => Response::error(
                ErrorKind::BadRequest,
                "events are streamed by the connection",
            ),
            Request::Metrics => match self.snapshot() {
                Ok(snapshot) => Response::ok(json!({"text": metrics::render(&snapshot)})),
                Err(e) => Response::error(ErrorKind::Failed, format!("{e:#}")),
            },
            Request::Ready => {
                let problems = self.readiness_problems();
                Response::ok(json!({"ready": problems.is_empty(), "problems": problems}))
            }
        }
    }

    /// What keeps the agent from being ready: programs not attached as the kernel reports
    /// it, or no policy in force. Empty when ready.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.attached.is_empty() {
            problems.push("no interface attached".to_string());
        }
        for a in &self.attached {
            match loader::attached_program(&a.pin_path) {
                Ok(id) if id == a.program_id => {}
                Ok(id) => problems.push(format!(
                    "{}: program {id} is attached, not ours ({})",
                    a.iface, a.program_id
                )),
                Err(e) => problems.push(format!("{}: {e:#}", a.iface)),
            }
        }
        if self.history.current().is_none() {
            problems.push("no policy in force".to_string());
        }
        problems
    }

    fn snapshot(&self) -> anyhow::Result<metrics::Snapshot> {
        let maps = &self.enforcer.maps;
        let now = monotonic_now_ns();
        let bans_active = maps
            .bans()?
            .iter()
            .filter(|b| b.expires_ns > now && self.enforcer.ban_is_current(b.rule, b.epoch))
            .count();
        let mut interfaces = Vec::new();
        for a in &self.attached {
            interfaces.push((a.iface.clone(), maps.iface_counters(a.ifindex)?));
        }
        // The kernel counts program runs only while statistics are on (the sysctl, or a
        // BPF_ENABLE_STATS descriptor such as `--bpf-stats` holds, which the sysctl does not
        // show); all-zero counts mean they are off and are not reported.
        let mut programs = Vec::new();
        for info in aya::programs::loaded_programs().filter_map(Result::ok) {
            if let Some(a) = self.attached.iter().find(|a| a.program_id == info.id()) {
                programs.push(metrics::ProgramStats {
                    interface: a.iface.clone(),
                    hook: a.hook.to_string(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                });
            }
        }
        let bpf_stats_enabled = programs.iter().any(|p| p.run_count > 0);
        let policy = self.enforcer.policy();
        Ok(metrics::Snapshot {
            counters: maps.counters()?,
            rules: self.enforcer.rule_counters()?,
            interfaces,
            bans_active,
            allow_entries: policy.allow.len(),
            deny_entries: policy.deny.len(),
            buckets: maps.bucket_count(),
            capacity: policy.capacity,
            policy_version: self.version(),
            apply_failures: self.apply_failures,
            programs,
            bpf_stats_enabled,
        })
    }

    fn show(&self) -> Response {
        let Some(current) = self.history.current() else {
            return Response::error(ErrorKind::Failed, "no policy in force");
        };
        let versions: Vec<Value> = self
            .history
            .versions()
            .iter()
            .map(|v| json!({"version": v.number, "applied_at": v.applied_at, "origin": v.origin}))
            .collect();
        Response::ok(json!({
            "version": current.number,
            "applied_at": current.applied_at,
            "origin": current.origin,
            "modes": current.modes,
            "text": current.text,
            "versions": versions,
        }))
    }

    fn rollback(&mut self, version: Option<u64>, by: &str) -> Response {
        let versions = self.history.versions();
        let target = match version {
            Some(n) => self.history.get(n).cloned(),
            None if versions.len() >= 2 => Some(versions[versions.len() - 2].clone()),
            None => None,
        };
        let Some(target) = target else {
            let kept: Vec<u64> = versions.iter().map(|v| v.number).collect();
            let message = match version {
                Some(n) => format!("version {n} is not kept; kept versions: {kept:?}"),
                None => "there is no earlier version to roll back to".to_string(),
            };
            return Response::error(ErrorKind::NoSuchVersion, message);
        };
        let origin = format!("{by}: rollback to {}", target.number);
        let path = PathBuf::from(format!("version {}", target.number));
        match self.apply_version(&target.text, target.modes.clone(), origin, &path) {
            Ok((version, changes)) => Response::ok(json!({
                "version": version,
                "rolled_back_to": target.number,
                "changes": changes,
            })),
            Err(e) => e.response(),
        }
    }

    fn block(&mut self, cidr: &str, ttl_secs: Option<u64>, reason: Option<String>) -> Response {
        let net = match units::parse_cidr(cidr) {
            Ok(net) => net,
            Err(e) => return Response::error(ErrorKind::BadRequest, e.to_string()),
        };
        let expires_ns = match ttl_secs {
            Some(0) => return Response::error(ErrorKind::BadRequest, "--ttl must be above zero"),
            Some(secs) => monotonic_now_ns().saturating_add(secs.saturating_mul(1_000_000_000)),
            None => u64::MAX,
        };
        match self.enforcer.maps.block(net, expires_ns) {
            Ok(()) => {
                if let Some(reason) = &reason {
                    self.block_reasons.insert(net, reason.clone());
                }
                tracing::info!(%net, ttl_secs, reason, "blocked");
                Response::ok(json!({"cidr": net.to_string(), "ttl_secs": ttl_secs}))
            }
            Err(MapsError::AlreadyBanned { net }) => Response::error(
                ErrorKind::AlreadyBlocked,
                format!("{net} is already blocked or banned"),
            ),
            Err(e) => Response::error(ErrorKind::Failed, e.to_string()),
        }
    }

    fn unblock(&mut self, cidr: &str) -> Response {
        let net = match units::parse_cidr(cidr) {
            Ok(net) => net,
            Err(e) => return Response::error(ErrorKind::BadRequest, e.to_string()),
        };
        match self.enforcer.maps.unban(net) {
            Ok(true) => {
                self.block_reasons.remove(&net);
                tracing::info!(%net, "unblocked");
                Response::ok(json!({"cidr": net.to_string()}))
            }
            Ok(false) => Response::error(
                ErrorKind::NotBlocked,
                format!("{net} is not blocked or banned"),
            ),
            Err(e) => Response::error(ErrorKind::Failed, e.to_string()),
        }
    }

    fn bans(&self) -> Response {
        let bans = match self.enforcer.maps.bans() {
            Ok(bans) => bans,
            Err(e) => return Response::error(ErrorKind::Failed, e.to_string()),
        };
        let now = monotonic_now_ns();
        let names = self.enforcer.rule_names();
        let list: Vec<Value> = bans
            .iter()
            .filter(|b| b.expires_ns > now && self.enforcer.ban_is_current(b.rule, b.epoch))
            .map(|b| {
                let time_left =
                    (b.expires_ns != u64::MAX).then(|| (b.expires_ns - now) / 1_000_000_000);
                json!({
                    "cidr": b.net.to_string(),
                    "kind": if b.rule == BLOCK_RULE { "block" } else { "escalation" },
                    "rule": names.get(&b.rule).cloned().unwrap_or_else(|| format!("#{}", b.rule)),
                    "seconds_left": time_left,
                    "reason": self.block_reasons.get(&b.net),
                })
            })
            .collect();
        Response::ok(json!({"bans": list}))
    }

    fn stats(&self) -> Response {
        let result = (|| -> anyhow::Result<Value> {
            let counters = self.enforcer.maps.counters()?;
            let rules: serde_json::Map<String, Value> = self
                .enforcer
                .rule_counters()?
                .into_iter()
                .map(|(name, c)| {
                    (
                        name,
                        json!({"passed": c.passed, "dropped": c.dropped, "shadowed": c.shadowed}),
                    )
                })
                .collect();
            let mut verdicts = serde_json::Map::new();
            let mut shadow = serde_json::Map::new();
            for reason in Reason::ALL {
                verdicts.insert(reason.name().into(), counters.verdict(reason).into());
                shadow.insert(reason.name().into(), counters.shadowed(reason).into());
            }
            let malformed: serde_json::Map<String, Value> = MalformedCause::ALL
                .iter()
                .map(|cause| (cause.name().into(), counters.malformed(*cause).into()))
                .collect();
            let policy = self.enforcer.policy();
            Ok(json!({
                "verdicts": verdicts,
                "shadow": shadow,
                "malformed": malformed,
                "rules": rules,
                "events": {
                    "written": counters.events_written,
                    "suppressed": counters.events_suppressed,
                    "lost": counters.events_lost,
                },
                "maps": {
                    "allow": policy.allow.len(),
                    "deny": policy.deny.len(),
                    "bans": self.enforcer.maps.bans()?.len(),
                    "buckets": self.enforcer.maps.bucket_count(),
                    "bans_failed": counters.bans_failed,
                    "capacity": {
                        "sources": policy.capacity.sources,
                        "cidrs": policy.capacity.cidrs,
                        "bans": policy.capacity.bans,
                    },
                },
            }))
        })();
        match result {
            Ok(value) => Response::ok(value),
            Err(e) => Response::error(ErrorKind::Failed, format!("{e:#}")),
        }
    }

    fn status(&self) -> Response {
        let interfaces: Vec<Value> = self
            .attached
            .iter()
            .map(|a| json!({"interface": a.iface, "hook": a.hook, "program_id": a.program_id}))
            .collect();
        Response::ok(json!({
            "interfaces": interfaces,
            "policy_version": self.version(),
            "policy_file": self.policy_path.display().to_string(),
            "modes": self.modes,
            "pin_dir": self.pin_dir.display().to_string(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "agent_version": env!("CARGO_PKG_VERSION"),
        }))
    }
}
