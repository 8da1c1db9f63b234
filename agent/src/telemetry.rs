//! What the agent reports, read without going through its main loop: the kernel's counters
//! and bans (read-only map handles), and what the daemon publishes after every apply (the
//! policy version, the rules in force) and at start (what it attached). `stats`,
//! `/metrics`, `/readyz` and the summaries all read from here, so they agree.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use agent_common::{Capacity, MalformedCause, Mode, Reason, RuleCounters};

use crate::{
    census::{self, Census},
    control::protocol::{
        CapacityStats, CrowdsecStatus, ErrorKind, EventCounts, ListStatus, MapStats, Response,
        RuleCounts, Stats,
    },
    loader,
    maps::{Ban, Counters, MapsError, Origin, TelemetryMaps, monotonic_now_ns},
    metrics,
};

/// One interface the agent attached to.
#[derive(Debug, Clone)]
pub struct Attached {
    pub iface: String,
    pub ifindex: u32,
    /// "xdp-native", "xdp-skb" or "tc" for a new link; "xdp" or "tc" for a link taken over.
    pub hook: &'static str,
    pub program_id: u32,
    /// True when the link was a previous agent's and only the program in it was replaced.
    pub adopted: bool,
    /// Where the link is pinned; reading it back tells what is attached.
    pub pin_path: PathBuf,
}

/// The rules of the policy in force, by id: what counters, events and bans are labelled
/// and judged with. Published by the enforcer's side after every apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesInForce {
    /// Name of every id in use (rate limits, deny groups, `block`).
    pub names: BTreeMap<u32, String>,
    /// Epoch of every rule with a configuration; a ban made under another epoch is void.
    pub epochs: BTreeMap<u32, u32>,
    /// Mode of every rule with a configuration.
    pub modes: BTreeMap<u32, Mode>,
    /// Names of the HTTP routes among the rules.
    pub routes: std::collections::BTreeSet<String>,
    /// Names of the response rules among the rules.
    pub responses: std::collections::BTreeSet<String>,
}

impl RulesInForce {
    /// The name of rule `id`, or `#id` for an id no rule has.
    pub fn name(&self, id: u32) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// Whether a ban made by rule `rule` under `epoch` still stands: its rule exists and
    /// has not changed since. `portcullis block` bans always stand.
    pub fn ban_is_current(&self, rule: u32, epoch: u32) -> bool {
        self.epochs.get(&rule) == Some(&epoch)
    }

    /// Named rules (deny groups, rate limits, routes, response rules): what fills
    /// `capacity.rules`.
    pub fn named_count(&self) -> usize {
        self.names
            .keys()
            .filter(|&&id| agent_common::is_named_rule_id(id))
            .count()
    }

    /// The mode rule `id` acts in now (a ban of a rule in shadow mode drops nothing).
    pub fn mode(&self, id: u32) -> Mode {
        self.modes.get(&id).copied().unwrap_or_default()
    }
}

/// The policy in force, as telemetry needs it.
#[derive(Debug, Clone)]
pub struct InForce {
    /// 0 before any policy is in force.
    pub version: u64,
    /// Why the policy file is not what is in force (invalid or unreadable), with its line;
    /// `None` when it is.
    pub file_error: Option<String>,
    pub rules: RulesInForce,
    pub allow_entries: usize,
    pub deny_entries: usize,
    pub capacity: Capacity,
    /// The IP lists the policy names, as `status` shows them.
    pub lists: Vec<ListStatus>,
}

pub struct Telemetry {
    maps: TelemetryMaps,
    in_force: RwLock<Arc<InForce>>,
    attached: RwLock<Arc<[Attached]>>,
    apply_failures: AtomicU64,
    /// Errors the agent met at run time and carried on after, by what failed.
    runtime_errors: RwLock<BTreeMap<&'static str, u64>>,
    /// Event and summary lines the agent could not write (stdout closed or failing).
    lines_unwritten: AtomicU64,
    /// How full the maps were at the last count (see `census`).
    census: RwLock<Census>,
    /// When the main loop last came round (monotonic nanoseconds): what liveness reads.
    main_loop_beat_ns: AtomicU64,
    /// The CrowdSec decision sync's state, when the agent follows a Local API.
    crowdsec: RwLock<Option<CrowdsecStatus>>,
}

impl Telemetry {
    pub fn new(maps: TelemetryMaps, in_force: InForce) -> Self {
        Self {
            maps,
            in_force: RwLock::new(Arc::new(in_force)),
            attached: RwLock::new(Arc::from(Vec::new())),
            apply_failures: AtomicU64::new(0),
            runtime_errors: RwLock::new(BTreeMap::new()),
            lines_unwritten: AtomicU64::new(0),
            census: RwLock::new(Census::default()),
            main_loop_beat_ns: AtomicU64::new(monotonic_now_ns()),
            crowdsec: RwLock::new(None),
        }
    }

    /// Records the CrowdSec decision sync's state (after every pull).
    pub fn set_crowdsec(&self, status: CrowdsecStatus) {
        *self.crowdsec.write().expect("not poisoned") = Some(status);
    }

    pub fn crowdsec(&self) -> Option<CrowdsecStatus> {
        self.crowdsec.read().expect("not poisoned").clone()
    }

    /// Records that the main loop came round.
    pub fn beat(&self) {
        self.main_loop_beat_ns
            .store(monotonic_now_ns(), Ordering::Relaxed);
    }

    /// How long ago the main loop last came round.
    pub fn since_beat(&self) -> std::time::Duration {
        let beat = self.main_loop_beat_ns.load(Ordering::Relaxed);
        std::time::Duration::from_nanos(monotonic_now_ns().saturating_sub(beat))
    }

    /// The answer to `stats`, as the control socket sends it.
    pub fn stats_response(&self) -> Response {
        match self.stats() {
            Ok(stats) => Response::ok(&stats),
            Err(e) => Response::error(ErrorKind::Failed, e.to_string()),
        }
    }

    /// The read-only map handles (for the census).
    pub fn maps(&self) -> &TelemetryMaps {
        &self.maps
    }

    /// Counts the maps again (see `census`); run by the census thread, and by the harness.
    pub fn refresh_census(&self) {
        let previous = self.census();
        let census = census::take(self, &previous);
        *self.census.write().expect("not poisoned") = census;
    }

    /// How full the maps were at the last count.
    pub fn census(&self) -> Census {
        *self.census.read().expect("not poisoned")
    }

    /// Counts an error the agent carried on after; `what` names what failed (a metric
    /// label: a short fixed text).
    pub fn count_runtime_error(&self, what: &'static str) {
        *self
            .runtime_errors
            .write()
            .expect("not poisoned")
            .entry(what)
            .or_default() += 1;
    }

    /// Counts event or summary lines that could not be written.
    pub fn count_unwritten_lines(&self, lines: u64) {
        self.lines_unwritten.fetch_add(lines, Ordering::Relaxed);
    }

    /// Replaces what telemetry knows of the policy in force.
    pub fn publish(&self, in_force: InForce) {
        *self.in_force.write().expect("not poisoned") = Arc::new(in_force);
    }

    pub fn in_force(&self) -> Arc<InForce> {
        self.in_force.read().expect("not poisoned").clone()
    }

    /// Records what the agent attached (once, at start).
    pub fn set_attached(&self, attached: Vec<Attached>) {
        *self.attached.write().expect("not poisoned") = Arc::from(attached);
    }

    pub fn attached(&self) -> Arc<[Attached]> {
        self.attached.read().expect("not poisoned").clone()
    }

    /// Counts an apply that was refused or failed (a file reload or a CLI request).
    pub fn count_apply_failure(&self) {
        self.apply_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> Result<Counters, MapsError> {
        self.maps.counters()
    }

    /// Per-rule counters of the rules in force, by name, leaving out those that counted
    /// nothing.
    pub fn rule_counters(&self) -> Result<Vec<(String, RuleCounters)>, MapsError> {
        let in_force = self.in_force();
        let names = &in_force.rules.names;
        let counters = self.maps.rule_counters(names.keys().copied())?;
        Ok(counters
            .into_iter()
            .map(|(id, c)| (names[&id].clone(), c))
            .collect())
    }

    /// The blocks, bans and decisions in force: not expired, and (but for decisions) made
    /// by a rule that has not changed since.
    pub fn bans(&self) -> Result<Vec<Ban>, MapsError> {
        Ok(self.in_force_only(self.maps.bans()?))
    }

    /// As `bans`, without the detector decisions.
    pub fn blocks_and_bans(&self) -> Result<Vec<Ban>, MapsError> {
        Ok(self.in_force_only(self.maps.blocks_and_bans()?))
    }

    fn in_force_only(&self, all: Vec<Ban>) -> Vec<Ban> {
        let rules = &self.in_force().rules;
        let now = monotonic_now_ns();
        all.into_iter()
            .filter(|b| {
                // A decision stands on its own; a ban or block on the rule behind it.
                let current = matches!(b.origin, Origin::Decision(_))
                    || rules.ban_is_current(b.rule, b.epoch);
                b.expires_ns > now && current
            })
            .collect()
    }

    /// What keeps the agent from being ready: programs not attached as the kernel reports
    /// it, or no policy in force. Empty when ready.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let attached = self.attached();
        if attached.is_empty() {
            problems.push("no interface attached".to_string());
        }
        for a in attached.iter() {
            match loader::attached_program(&a.pin_path) {
                Ok(id) if id == a.program_id => {}
                Ok(id) => problems.push(format!(
                    "{}: program {id} is attached, not ours ({})",
                    a.iface, a.program_id
                )),
                Err(e) => problems.push(format!("{}: {e:#}", a.iface)),
            }
        }
        if self.in_force().version == 0 {
            problems.push("no policy in force".to_string());
        }
        problems
    }

    /// The answer to `stats`.
    pub fn stats(&self) -> Result<Stats, MapsError> {
        let counters = self.counters()?;
        let census = self.census();
        let in_force = self.in_force();
        let by_reason = |count: &dyn Fn(Reason) -> u64| -> BTreeMap<String, u64> {
            Reason::ALL
                .into_iter()
                .map(|reason| (reason.name().to_string(), count(reason)))
                .collect()
        };
        Ok(Stats {
            verdicts: by_reason(&|reason| counters.verdict(reason)),
            shadow: by_reason(&|reason| counters.shadowed(reason)),
            malformed: MalformedCause::ALL
                .into_iter()
                .map(|cause| (cause.name().to_string(), counters.malformed(cause)))
                .collect(),
            rules: self
                .rule_counters()?
                .into_iter()
                .map(|(name, c)| {
                    // A response rule's kernel count is of responses, not passed packets.
                    let response_rule = in_force.rules.responses.contains(&name);
                    let counts = RuleCounts {
                        passed: if response_rule { 0 } else { c.passed },
                        dropped: c.dropped,
                        shadowed: c.shadowed,
                        responses: if response_rule { c.passed } else { 0 },
                    };
                    (name, counts)
                })
                .collect(),
            events: EventCounts {
                written: counters.events_written,
                suppressed: counters.events_suppressed,
                lost: counters.events_lost,
            },
            maps: MapStats {
                allow: in_force.allow_entries,
                deny: in_force.deny_entries,
                bans: census.bans,
                blocks: census.blocks,
                buckets: census.buckets,
                rules: in_force.rules.named_count(),
                bans_failed: counters.bans_failed,
                capacity: CapacityStats {
                    sources: in_force.capacity.sources,
                    cidrs: in_force.capacity.cidrs,
                    bans: in_force.capacity.bans,
                    blocks: in_force.capacity.blocks,
                    rules: in_force.capacity.rules,
                },
            },
        })
    }

    /// The Prometheus text for `/metrics`.
    pub fn metrics(&self) -> Result<String, MapsError> {
        Ok(metrics::render(&self.snapshot()?))
    }

    fn snapshot(&self) -> Result<metrics::Snapshot, MapsError> {
        let in_force = self.in_force();
        let attached = self.attached();
        let mut interfaces = Vec::new();
        for a in attached.iter() {
            interfaces.push((a.iface.clone(), self.maps.iface_counters(a.ifindex)?));
        }
        // The kernel counts program runs only while statistics are on (the sysctl, or a
        // BPF_ENABLE_STATS descriptor such as `--bpf-stats` holds, which the sysctl does not
        // show); all-zero counts mean they are off and are not reported.
        let mut programs = Vec::new();
        for info in aya::programs::loaded_programs().filter_map(Result::ok) {
            if let Some(a) = attached.iter().find(|a| a.program_id == info.id()) {
                programs.push(metrics::ProgramStats {
                    interface: a.iface.clone(),
                    hook: a.hook.to_string(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                });
            }
        }
        let bpf_stats_enabled = programs.iter().any(|p| p.run_count > 0);
        let census = self.census();
        Ok(metrics::Snapshot {
            counters: self.counters()?,
            rules: self.rule_counters()?,
            routes: in_force.rules.routes.clone(),
            responses: in_force.rules.responses.clone(),
            interfaces,
            bans_active: census.bans,
            blocks_active: census.blocks,
            allow_entries: in_force.allow_entries,
            deny_entries: in_force.deny_entries,
            named_rules: in_force.rules.named_count(),
            buckets: census.buckets,
            census_age_secs: census.at.map_or(0, |at| at.elapsed().as_secs()),
            capacity: in_force.capacity,
            policy_version: in_force.version,
            policy_file_valid: in_force.file_error.is_none(),
            apply_failures: self.apply_failures.load(Ordering::Relaxed),
            runtime_errors: self
                .runtime_errors
                .read()
                .expect("not poisoned")
                .iter()
                .map(|(what, count)| (what.to_string(), *count))
                .collect(),
            lines_unwritten: self.lines_unwritten.load(Ordering::Relaxed),
            programs,
            bpf_stats_enabled,
            crowdsec: self.crowdsec(),
            lists: in_force.lists.clone(),
        })
    }
}
