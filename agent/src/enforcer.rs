//! The policy in force, and the one way to change it: validate, build tables, write the
//! difference. File reloads go through `apply` (and so will control-socket updates).

use std::{collections::BTreeMap, path::Path};

use agent_common::RuleCounters;

use anyhow::{Result, bail};

use crate::{
    maps::KernelMaps,
    policy::{self, Policy},
    tables::{self, RuleIds, Tables},
};

pub struct Enforcer {
    pub maps: KernelMaps,
    policy: Policy,
    tables: Tables,
    ids: RuleIds,
    cpus: u32,
}

impl Enforcer {
    /// Writes `policy` into freshly loaded (empty) maps.
    pub fn new(maps: KernelMaps, policy: Policy, cpus: u32) -> Result<Self> {
        let mut ids = RuleIds::default();
        let tables = tables::build(&policy, &mut ids, cpus);
        let mut enforcer = Self {
            maps,
            policy,
            tables: Tables::default(),
            ids,
            cpus,
        };
        enforcer.maps.apply(&Tables::default(), &tables)?;
        enforcer.tables = tables;
        Ok(enforcer)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Names of the rule ids in use, for labelling events.
    pub fn rule_names(&self) -> BTreeMap<u32, String> {
        self.tables.names.clone()
    }

    /// Per-rule counters of the policy in force, by name.
    pub fn rule_counters(&self) -> Result<Vec<(String, RuleCounters)>> {
        let counters = self.maps.rule_counters(self.tables.names.keys().copied())?;
        Ok(counters
            .into_iter()
            .map(|(id, c)| (self.tables.names[&id].clone(), c))
            .collect())
    }

    /// Replaces the policy in force. Map sizes are fixed at load time, so a policy that
    /// changes `capacity` is refused and the current one stays.
    pub fn apply(&mut self, policy: Policy) -> Result<()> {
        if policy.capacity != self.policy.capacity {
            bail!(
                "capacity changed ({:?} -> {:?}); map sizes are fixed at load time, restart the agent to change them",
                self.policy.capacity,
                policy.capacity
            );
        }
        let mut ids = self.ids.clone();
        let tables = tables::build(&policy, &mut ids, self.cpus);
        self.maps.apply(&self.tables, &tables)?;
        self.tables = tables;
        self.ids = ids;
        self.policy = policy;
        Ok(())
    }

    /// Re-reads `path` and applies it if it differs from the policy in force.
    /// Returns whether anything changed.
    pub fn reload(&mut self, path: &Path) -> Result<bool> {
        let policy = policy::load(path)?;
        if policy == self.policy {
            return Ok(false);
        }
        self.apply(policy)?;
        Ok(true)
    }
}
