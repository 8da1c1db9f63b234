//! The policy in force, and the one way to change it: build tables, write them into the
//! policy set not in force, then switch sets. The enforcer alone holds the policy maps and
//! the rule ids (saved in the state directory after every apply). File reloads and control
//! requests reach `apply` through `daemon`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::Mode;
use anyhow::{Context as _, Result, bail};

use crate::{
    maps::PolicyMaps,
    policy::Policy,
    rule_ids::RuleIds,
    tables::{self, Tables},
    telemetry::RulesInForce,
};

/// After a switch, packets that read the old generation may still be using the old set for
/// the length of one program run (well under a microsecond). The next apply writes into
/// that set, so it waits this long after the last switch first.
const SWITCH_GRACE: Duration = Duration::from_millis(10);

pub struct Enforcer {
    maps: PolicyMaps,
    policy: Policy,
    ids: RuleIds,
    /// Where the ids are saved after every apply, so that an agent that takes the pinned
    /// maps over keeps the state of unchanged rules; `None` when nothing outlives the maps
    /// (tests).
    state_dir: Option<PathBuf>,
    /// What each policy set holds; `None` if a write failed halfway and the set must be
    /// cleared before it is used again.
    written: [Option<Tables>; 2],
    /// The set packets are judged by.
    active: usize,
    last_switch: Instant,
    cpus: u32,
}

impl Enforcer {
    /// Writes `policy` into freshly loaded (empty) maps and puts it in force, saving the
    /// rule ids in `state_dir` if given.
    pub fn new(
        mut maps: PolicyMaps,
        policy: Policy,
        cpus: u32,
        state_dir: Option<&Path>,
    ) -> Result<Self> {
        let mut ids = RuleIds::default();
        let tables = tables::build(&policy, &mut ids, cpus);
        let empty = Tables::default();
        maps.write_set(0, &empty, &tables)?;
        maps.update_shared(&RuleIds::default().names(), &ids.names(), &tables)?;
        maps.switch_to(0)?;
        let enforcer = Self {
            maps,
            policy,
            ids,
            state_dir: state_dir.map(Path::to_path_buf),
            written: [Some(tables), Some(empty)],
            active: 0,
            last_switch: Instant::now(),
            cpus,
        };
        enforcer.save_ids();
        Ok(enforcer)
    }

    /// Takes over maps a previous agent pinned, with the rule ids it saved in `state_dir`,
    /// and puts `policy` in force through the usual switch. Packets go on being judged by
    /// the previous agent's policy until then; unchanged rules keep their buckets and bans.
    pub fn adopt(maps: PolicyMaps, policy: Policy, cpus: u32, state_dir: &Path) -> Result<Self> {
        let active = maps.generation()?;
        let ids = RuleIds::load_or_fresh(state_dir);
        let mut enforcer = Self {
            maps,
            policy: policy.clone(),
            ids,
            state_dir: Some(state_dir.to_path_buf()),
            // What the sets hold is not known: both are cleared before they are written.
            written: [None, None],
            active,
            // The previous agent is gone; no packet can still be using its last switch.
            last_switch: Instant::now()
                .checked_sub(SWITCH_GRACE)
                .unwrap_or_else(Instant::now),
            cpus,
        };
        enforcer.put_in_force(policy)?;
        Ok(enforcer)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The rules of the policy in force as telemetry needs them: names and epochs by id.
    pub fn rules_in_force(&self) -> RulesInForce {
        let tables = self.written[self.active]
            .as_ref()
            .expect("the set in force was written completely");
        RulesInForce {
            names: self.ids.names(),
            epochs: tables
                .rules
                .iter()
                .map(|(id, config)| (*id, config.epoch))
                .collect(),
            modes: tables
                .rules
                .iter()
                .filter_map(|(id, config)| Some((*id, Mode::from_code(config.mode)?)))
                .collect(),
            routes: self
                .policy
                .http
                .iter()
                .flat_map(|http| &http.routes)
                .map(|route| route.name.clone())
                .collect(),
            responses: self
                .policy
                .http
                .iter()
                .flat_map(|http| &http.responses)
                .map(|rule| rule.name.clone())
                .collect(),
        }
    }

    /// Replaces the policy in force. Packets are judged by the old policy until one map
    /// write switches them all to the new one. Map sizes are fixed at load time, so a
    /// policy that changes `capacity` is refused and the current one stays.
    pub fn apply(&mut self, policy: Policy) -> Result<()> {
        if policy.capacity != self.policy.capacity {
            bail!(
                "capacity changed ({:?} -> {:?}); map sizes are fixed at load time, restart the agent to change them",
                self.policy.capacity,
                policy.capacity
            );
        }
        self.put_in_force(policy)
    }

    /// Writes `policy` into the set not in force and switches to it.
    fn put_in_force(&mut self, policy: Policy) -> Result<()> {
        let mut ids = self.ids.clone();
        let tables = tables::build(&policy, &mut ids, self.cpus);
        let next = 1 - self.active;
        let since_switch = self.last_switch.elapsed();
        if since_switch < SWITCH_GRACE {
            std::thread::sleep(SWITCH_GRACE - since_switch);
        }
        let old = match self.written[next].take() {
            Some(old) => old,
            None => {
                self.maps
                    .clear_set(next)
                    .context("clearing the policy set a failed apply left half-written")?;
                Tables::default()
            }
        };
        // If this fails, `written[next]` stays `None`: the set is not in force, so traffic
        // is unaffected, and the next apply starts by clearing it.
        self.maps.write_set(next, &old, &tables)?;
        self.maps
            .update_shared(&self.ids.names(), &ids.names(), &tables)?;
        self.maps.switch_to(next)?;
        self.last_switch = Instant::now();
        self.written[next] = Some(tables);
        self.active = next;
        self.ids = ids;
        self.policy = policy;
        self.save_ids();
        Ok(())
    }

    /// Saves the rule ids. A failure is a warning: the policy is in force either way, and
    /// only a restart that takes the maps over loses the state of unchanged rules.
    fn save_ids(&self) {
        if let Some(dir) = &self.state_dir
            && let Err(e) = self.ids.save(dir)
        {
            tracing::warn!(
                error = %e,
                "the rule ids were not saved; an agent that takes these maps over will start every rule afresh"
            );
        }
    }
}
