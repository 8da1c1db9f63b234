//! The running agent's state and what it does for each control request: versioned policy
//! applies (from the file or the CLI), rollbacks, mode switches, blocks, bans, stats and
//! status. Every policy change goes through `apply_version`, which publishes the result to
//! telemetry.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use ipnet::IpNet;

use crate::{
    control::protocol::{
        Applied, BanInfo, BanKind, BanList, Blocked, Changes, ErrorKind, InterfaceStatus,
        PolicyShown, Request, Response, Status, Unblocked, VersionSummary,
    },
    enforcer::Enforcer,
    history::History,
    lists::{self, Copies},
    maps::{BanMaps, MapsError, Origin, Swept, monotonic_now_ns},
    policy::{self, ListRule, Mode, Policy, PolicyError, units},
    telemetry::{InForce, Telemetry},
};

pub struct Daemon {
    enforcer: Enforcer,
    /// The policy in force as its text says it (with mode switches), before its lists'
    /// entries are merged in: what a list's new copy is merged into.
    declared: Policy,
    lists: Copies,
    /// How each list of `declared` went into the policy in force.
    lists_in_force: Vec<lists::InForce>,
    /// The lists to follow (files watched, URLs fetched), for the lists task.
    wanted_lists: tokio::sync::watch::Sender<Vec<ListRule>>,
    state_dir: PathBuf,
    bans: BanMaps,
    telemetry: Arc<Telemetry>,
    history: History,
    policy_path: PathBuf,
    /// The policy file's text as last read, so a watch event without a change is ignored
    /// and a CLI apply is not undone by an unrelated event in the directory.
    file_text: String,
    /// Run-time mode switches on top of the current version's text.
    modes: BTreeMap<String, Mode>,
    /// Why the policy file is not in force (it is invalid or unreadable), with its line.
    file_error: Option<String>,
    block_reasons: BTreeMap<IpNet, String>,
    pin_dir: PathBuf,
    started: Instant,
    /// True when the agent took over a previous agent's pinned maps.
    took_over_maps: bool,
}

/// What the daemon is started with.
pub struct DaemonParts {
    pub enforcer: Enforcer,
    /// The policy `enforcer` put in force before its lists were merged in, the lists'
    /// copies it was merged with, and how each went in.
    pub declared: Policy,
    pub lists: Copies,
    pub lists_in_force: Vec<lists::InForce>,
    pub wanted_lists: tokio::sync::watch::Sender<Vec<ListRule>>,
    pub state_dir: PathBuf,
    pub bans: BanMaps,
    pub telemetry: Arc<Telemetry>,
    pub history: History,
    pub policy_path: PathBuf,
    /// The text `enforcer` put in force, and its run-time mode switches.
    pub text: String,
    pub modes: BTreeMap<String, Mode>,
    /// The policy file's text as read, and why it is not what is in force, if it is not.
    pub file_text: String,
    pub file_error: Option<String>,
    pub pin_dir: PathBuf,
    pub took_over_maps: bool,
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

fn failed(e: impl Into<anyhow::Error>) -> Response {
    Response::error(ErrorKind::Failed, format!("{:#}", e.into()))
}

impl Daemon {
    /// Takes over an enforcer that already applied the policy file's text, and records
    /// that text as a new version unless it is the version in force already.
    pub fn new(parts: DaemonParts) -> anyhow::Result<Self> {
        let DaemonParts {
            enforcer,
            declared,
            lists,
            lists_in_force,
            wanted_lists,
            state_dir,
            bans,
            telemetry,
            mut history,
            policy_path,
            text,
            modes,
            file_text,
            file_error,
            pin_dir,
            took_over_maps,
        } = parts;
        let same = history
            .current()
            .is_some_and(|v| v.text == text && v.modes == modes);
        if !same {
            history.record(
                format!("file {}", policy_path.display()),
                text,
                modes.clone(),
            );
        }
        let mut daemon = Self {
            enforcer,
            declared,
            lists,
            lists_in_force,
            wanted_lists,
            state_dir,
            bans,
            telemetry,
            history,
            policy_path,
            file_text,
            modes,
            file_error,
            block_reasons: BTreeMap::new(),
            pin_dir,
            started: Instant::now(),
            took_over_maps,
        };
        if !same {
            daemon.save_history();
        }
        daemon.publish();
        Ok(daemon)
    }

    pub fn version(&self) -> u64 {
        self.history.current().map_or(0, |v| v.number)
    }

    /// Writes the history; a failure is a warning (what is in force does not depend on it),
    /// counted, and tried again with the next apply.
    fn save_history(&mut self) {
        if let Err(e) = self.history.save() {
            self.telemetry.count_runtime_error("state save");
            tracing::warn!(
                error = %e,
                "the policy history was not saved; the policy is in force, but a restart will not know this version"
            );
        }
    }

    /// Tells telemetry what is in force now.
    fn publish(&self) {
        let policy = self.enforcer.policy();
        let listed = |allow: bool| -> usize {
            policy
                .lists
                .iter()
                .zip(&policy.listed)
                .filter(|(rule, _)| (rule.action == policy::ListAction::Allow) == allow)
                .map(|(_, nets)| nets.len())
                .sum()
        };
        self.telemetry.publish(InForce {
            version: self.version(),
            file_error: self.file_error.clone(),
            rules: self.enforcer.rules_in_force(),
            allow_entries: policy.allow.len() + listed(true),
            deny_entries: policy.deny.len() + listed(false),
            capacity: policy.capacity,
            lists: self.lists.status(&self.declared, &self.lists_in_force),
        });
    }

    /// The answer to an apply, a mode switch or a rollback, with what to know about the
    /// lists in force.
    fn applied(
        &self,
        result: Result<(u64, Vec<String>), ApplyError>,
        rolled_back_to: Option<u64>,
    ) -> Response {
        match result {
            Ok((version, changes)) => Response::ok(&Applied {
                version,
                changes,
                rolled_back_to,
                warnings: self.list_warnings(),
            }),
            Err(e) => e.response(),
        }
    }

    /// Lists not read yet, failing, with bad lines or not applied, one line each.
    pub fn list_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for list in self.lists.status(&self.declared, &self.lists_in_force) {
            let rule = &list.rule;
            match (&list.error, list.read_unix) {
                (Some(error), None) => warnings.push(format!(
                    "{rule}: {error}; it applies as empty until it can be read"
                )),
                (None, None) => warnings.push(format!(
                    "{rule}: not fetched yet; its entries apply once it is"
                )),
                (Some(error), Some(at)) => warnings.push(format!(
                    "{rule}: {error}; the copy read at {} (Unix time) stays in force",
                    at
                )),
                (None, Some(_)) => {}
            }
            if list.bad_lines > 0 {
                warnings.push(format!(
                    "{rule}: {} bad lines skipped, the rest applies: {}",
                    list.bad_lines,
                    list.bad_lines_shown.join("; ")
                ));
            }
            if let Some(why) = &list.not_applied {
                warnings.push(format!("{rule}: not applied: {why}"));
            }
        }
        warnings
    }

    /// Takes a read of one list; a changed copy of a list in force is merged into the
    /// policy and put in force (the policy's version stays: its text did not change).
    pub fn list_update(&mut self, update: lists::Update) -> anyhow::Result<()> {
        let source = update.source.clone();
        if let lists::Outcome::Failed(error) = &update.outcome {
            tracing::warn!(list = %source, error, "list not read; the copy in force stays");
        }
        let changed = self.lists.update(update);
        if changed && self.declared.lists.iter().any(|r| r.source == source) {
            let (policy, in_force) = lists::expand(&self.declared, &self.lists);
            let changes = policy::diff::diff(self.enforcer.policy(), &policy);
            if !changes.is_empty() {
                let started = Instant::now();
                self.enforcer.apply(policy)?;
                tracing::info!(
                    list = %source,
                    changes = changes.join("; "),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "list applied"
                );
            }
            self.lists_in_force = in_force;
        }
        self.publish();
        Ok(())
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
            self.telemetry.count_apply_failure();
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
        let declared = policy::parse(source_name, text).map_err(ApplyError::Invalid)?;
        let declared = declared
            .with_modes(&modes)
            .map_err(|e| ApplyError::UnknownRule(e.to_string()))?;
        self.lists.read_local(&declared, &self.state_dir);
        let (policy, lists_in_force) = lists::expand(&declared, &self.lists);
        let changes = policy::diff::diff(self.enforcer.policy(), &policy);
        let current = self.history.current();
        if changes.is_empty() && current.is_some_and(|v| v.text == text && v.modes == modes) {
            return Ok((self.version(), changes));
        }
        let applied = self.enforcer.apply(policy);
        // Published whatever happened: a failed write leaves the old set in force.
        let recorded = applied.map(|()| {
            self.modes = modes.clone();
            self.lists.keep_only(&declared);
            self.lists_in_force = lists_in_force;
            self.wanted_lists.send_if_modified(|wanted| {
                let modified = *wanted != declared.lists;
                if modified {
                    wanted.clone_from(&declared.lists);
                }
                modified
            });
            self.declared = declared;
            self.history.record(origin.clone(), text.to_string(), modes)
        });
        self.publish();
        let version = recorded.map_err(ApplyError::Failed)?;
        // The policy is in force whether or not the history reaches the disk.
        self.save_history();
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
        match self.apply_version(&text, BTreeMap::new(), origin, &path) {
            Ok((version, _)) => {
                self.file_text = text;
                self.file_error = None;
                self.publish();
                Ok(Some(version))
            }
            // An invalid text stays invalid: it is remembered, so it is reported once and
            // not again on every unrelated event in the directory.
            Err(ApplyError::Invalid(e)) => {
                self.file_text = text;
                self.file_error = Some(e.to_string());
                self.publish();
                Err(e.into())
            }
            Err(ApplyError::UnknownRule(m)) => Err(anyhow::anyhow!(m)),
            // Not remembered: the next event in the directory tries the same text again.
            Err(ApplyError::Failed(e)) => Err(e),
        }
    }

    /// Removes ended blocks and ended or void bans (their rule was removed or changed),
    /// and the reasons given for blocks that ended.
    pub fn sweep_bans(&mut self) -> Result<Swept, MapsError> {
        let rules = self.telemetry.in_force().rules.clone();
        let swept = self.bans.sweep(monotonic_now_ns(), |rule, epoch| {
            rules.ban_is_current(rule, epoch)
        })?;
        for net in &swept.blocks {
            self.block_reasons.remove(net);
        }
        Ok(swept)
    }

    pub fn handle(&mut self, request: Request, uid: u32) -> Response {
        let by = format!("cli (uid {uid})");
        match request {
            Request::PolicyApply { text, origin } => {
                let source = PathBuf::from(&origin);
                let origin = format!("{by}: {origin}");
                let result = self.apply_version(&text, BTreeMap::new(), origin, &source);
                self.applied(result, None)
            }
            Request::PolicyDiff { text } => match policy::parse(Path::new("<diff>"), &text) {
                Ok(new) => {
                    // With the lists' entries as an apply would merge them; nothing kept.
                    let mut copies = self.lists.clone();
                    copies.read_local(&new, &self.state_dir);
                    let (new, _) = lists::expand(&new, &copies);
                    Response::ok(&Changes {
                        changes: policy::diff::diff(self.enforcer.policy(), &new),
                    })
                }
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
                let result = self.apply_version(&current.text, modes, origin, &path);
                self.applied(result, None)
            }
            Request::Block {
                cidr,
                ttl_secs,
                reason,
            } => self.block(&cidr, ttl_secs, reason),
            Request::Unblock { cidr } => self.unblock(&cidr),
            Request::Bans { kind, covering } => self.bans(kind, covering.as_deref()),
            Request::Stats => self.telemetry.stats_response(),
            Request::Status => Response::ok(&self.status()),
            Request::Events => Response::error(
                ErrorKind::BadRequest,
                "events are streamed by the connection",
            ),
        }
    }

    fn show(&self) -> Response {
        let Some(current) = self.history.current() else {
            return Response::error(ErrorKind::Failed, "no policy in force");
        };
        Response::ok(&PolicyShown {
            version: current.number,
            applied_at: current.applied_at,
            origin: current.origin.clone(),
            modes: current.modes.clone(),
            text: current.text.clone(),
            versions: self
                .history
                .versions()
                .iter()
                .map(|v| VersionSummary {
                    version: v.number,
                    applied_at: v.applied_at,
                    origin: v.origin.clone(),
                })
                .collect(),
        })
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
        let result = self.apply_version(&target.text, target.modes.clone(), origin, &path);
        self.applied(result, Some(target.number))
    }

    fn block(&mut self, cidr: &str, ttl_secs: Option<u64>, reason: Option<String>) -> Response {
        let net = match units::parse_cidr(cidr) {
            Ok(net) => net,
            Err(e) => return Response::error(ErrorKind::BadRequest, e.to_string()),
        };
        let expires_ns = match ttl_secs {
            Some(0) => return Response::error(ErrorKind::BadRequest, "--ttl must be above zero"),
            Some(secs) if secs.saturating_mul(1_000_000_000) > units::MAX_DURATION_NS => {
                return Response::error(
                    ErrorKind::BadRequest,
                    "--ttl is at most 365d; block without --ttl for longer",
                );
            }
            Some(secs) => monotonic_now_ns().saturating_add(secs.saturating_mul(1_000_000_000)),
            None => u64::MAX,
        };
        match self.bans.block(net, expires_ns) {
            Ok(()) => {
                if let Some(reason) = &reason {
                    self.block_reasons.insert(net, reason.clone());
                }
                tracing::info!(%net, ttl_secs, reason, "blocked");
                Response::ok(&Blocked {
                    cidr: net.to_string(),
                    ttl_secs,
                })
            }
            Err(MapsError::AlreadyBanned { net }) => Response::error(
                ErrorKind::AlreadyBlocked,
                format!("{net} is already blocked or banned"),
            ),
            Err(e) => failed(e),
        }
    }

    fn unblock(&mut self, cidr: &str) -> Response {
        let net = match units::parse_cidr(cidr) {
            Ok(net) => net,
            Err(e) => return Response::error(ErrorKind::BadRequest, e.to_string()),
        };
        match self.bans.unban(net) {
            Ok(true) => {
                self.block_reasons.remove(&net);
                tracing::info!(%net, "unblocked");
                Response::ok(&Unblocked {
                    cidr: net.to_string(),
                })
            }
            Ok(false) => Response::error(
                ErrorKind::NotBlocked,
                format!("{net} is not blocked or banned"),
            ),
            Err(e) => failed(e),
        }
    }

    fn bans(&self, kind: Option<BanKind>, covering: Option<&str>) -> Response {
        let covering = match covering.map(units::parse_cidr).transpose() {
            Ok(covering) => covering,
            Err(e) => return Response::error(ErrorKind::BadRequest, e.to_string()),
        };
        let bans = match self.telemetry.bans() {
            Ok(bans) => bans,
            Err(e) => return failed(e),
        };
        let now = monotonic_now_ns();
        let rules = &self.telemetry.in_force().rules;
        let bans = bans
            .iter()
            .filter(|b| covering.is_none_or(|net| net.contains(&b.net) || b.net.contains(&net)))
            .map(|b| BanInfo {
                cidr: b.net.to_string(),
                kind: match b.origin {
                    Origin::Block => BanKind::Block,
                    Origin::Escalation => BanKind::Escalation,
                    Origin::Decision(_) => BanKind::Decision,
                },
                // A decision names its origin where the others name a rule.
                rule: match b.origin {
                    Origin::Decision(origin) => origin.name().to_string(),
                    _ => rules.name(b.rule),
                },
                mode: match b.origin {
                    Origin::Escalation => rules.mode(b.rule),
                    Origin::Block | Origin::Decision(_) => Mode::Enforce,
                },
                seconds_left: (b.expires_ns != u64::MAX)
                    .then(|| b.expires_ns.saturating_sub(now) / 1_000_000_000),
                reason: self.block_reasons.get(&b.net).cloned(),
            })
            .filter(|b| kind.is_none_or(|kind| b.kind == kind))
            .collect();
        Response::ok(&BanList { bans })
    }

    fn status(&self) -> Status {
        let problems = self.telemetry.readiness_problems();
        Status {
            interfaces: self
                .telemetry
                .attached()
                .iter()
                .map(|a| InterfaceStatus {
                    interface: a.iface.clone(),
                    hook: a.hook.to_string(),
                    program_id: a.program_id,
                    adopted: a.adopted,
                })
                .collect(),
            policy_version: self.version(),
            policy_file: self.policy_path.display().to_string(),
            modes: self.modes.clone(),
            pin_dir: self.pin_dir.display().to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            ready: problems.is_empty(),
            problems,
            took_over_maps: self.took_over_maps,
            policy_file_error: self.file_error.clone(),
            crowdsec: self.telemetry.crowdsec(),
            lists: self.telemetry.in_force().lists.clone(),
        }
    }
}
