//! The policy in force, and the one way to change it: build tables, write them into the
//! policy set not in force, then switch sets. File reloads and control requests reach
//! `apply` through `daemon`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use agent_common::RuleCounters;
use anyhow::{Context as _, Result, bail};

use crate::{
    maps::KernelMaps,
    policy::Policy,
    tables::{self, RuleIds, Tables},
};

/// After a switch, packets that read the old generation may still be using the old set for
/// the length of one program run (well under a microsecond). The next apply writes into
/// that set, so it waits this long after the last switch first.
const SWITCH_GRACE: Duration = Duration::from_millis(10);

pub struct Enforcer {
    pub maps: KernelMaps,
    policy: Policy,
    ids: RuleIds,
    /// What each policy set holds; `None` if a write failed halfway and the set must be
    /// cleared before it is used again.
    written: [Option<Tables>; 2],
    /// The set packets are judged by.
    active: usize,
    /// Names of the rule ids in the set in force: an id that changes name starts counting
    /// from zero.
    names_in_force: BTreeMap<u32, String>,
    last_switch: Instant,
    cpus: u32,
}

impl Enforcer {
    /// Writes `policy` into freshly loaded (empty) maps and puts it in force.
    pub fn new(mut maps: KernelMaps, policy: Policy, cpus: u32) -> Result<Self> {
        let mut ids = RuleIds::default();
        let tables = tables::build(&policy, &mut ids, cpus);
        let empty = Tables::default();
        maps.write_set(0, &empty, &tables)?;
        maps.update_shared(&BTreeMap::new(), &tables)?;
        maps.switch_to(0)?;
        Ok(Self {
            maps,
            policy,
            ids,
            names_in_force: tables.names.clone(),
            written: [Some(tables), Some(empty)],
            active: 0,
            last_switch: Instant::now(),
            cpus,
        })
    }

    /// Takes over maps a previous agent pinned, with the rule ids it saved, and puts
    /// `policy` in force through the usual switch. Packets go on being judged by the
    /// previous agent's policy until then; unchanged rules keep their buckets and bans.
    pub fn adopt(maps: KernelMaps, policy: Policy, ids: RuleIds, cpus: u32) -> Result<Self> {
        let active = maps.generation()?;
        let mut enforcer = Self {
            maps,
            policy: policy.clone(),
            names_in_force: ids.names(),
            ids,
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

    pub fn rule_ids(&self) -> &RuleIds {
        &self.ids
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn tables(&self) -> &Tables {
        self.written[self.active]
            .as_ref()
            .expect("the set in force was written completely")
    }

    /// Names of the rule ids in use, for labelling events.
    pub fn rule_names(&self) -> BTreeMap<u32, String> {
        self.tables().names.clone()
    }

    /// Whether a ban made by rule `rule` under `epoch` still stands: its rule exists and has
    /// not changed since. `portcullis block` bans always stand.
    pub fn ban_is_current(&self, rule: u32, epoch: u32) -> bool {
        self.tables()
            .rules
            .get(&rule)
            .is_some_and(|cfg| cfg.epoch == epoch)
    }

    /// Per-rule counters of the policy in force, by name.
    pub fn rule_counters(&self) -> Result<Vec<(String, RuleCounters)>> {
        let names = &self.tables().names;
        let counters = self.maps.rule_counters(names.keys().copied())?;
        Ok(counters
            .into_iter()
            .map(|(id, c)| (names[&id].clone(), c))
            .collect())
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
        self.maps.update_shared(&self.names_in_force, &tables)?;
        self.maps.switch_to(next)?;
        self.last_switch = Instant::now();
        self.names_in_force = tables.names.clone();
        self.written[next] = Some(tables);
        self.active = next;
        self.ids = ids;
        self.policy = policy;
        Ok(())
    }
}
