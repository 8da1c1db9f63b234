//! The two policy sets, the generation switch between them, and the maps both sets share
//! (settings, per-rule counters). Only the enforcer holds this.

use std::collections::BTreeMap;

use agent_common::{
    AclEntry, PortRules, RuleConfig, RuleCounters, Settings,
    http::{ROUTE_KEY_BYTES, RouteEntry, STATUS_CODES, StatusRules},
    maps::{self as names, PolicySetMaps as Specs},
};
use aya::maps::{
    Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};

use super::{MapsError, ctx, ignore_missing, port_table::PortTable, typed};
use crate::tables::Tables;

/// One of the two sets of policy maps (see `agent_common::maps`).
pub(super) struct PolicySetMaps {
    /// Names for errors.
    specs: &'static Specs,
    acl_ip_v4: HashMap<MapData, [u8; 4], AclEntry>,
    acl_ip_v6: HashMap<MapData, [u8; 16], AclEntry>,
    acl_v4: LpmTrie<MapData, [u8; 4], AclEntry>,
    acl_v6: LpmTrie<MapData, [u8; 16], AclEntry>,
    port_rules: PortTable,
    class_rules: Array<MapData, PortRules>,
    rules: Array<MapData, RuleConfig>,
    routes: LpmTrie<MapData, [u8; ROUTE_KEY_BYTES], RouteEntry>,
    status_rules: Array<MapData, StatusRules>,
}

impl PolicySetMaps {
    pub(super) fn take(
        take: &mut impl FnMut(&'static str) -> Result<Map, MapsError>,
        specs: &'static Specs,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            specs,
            acl_ip_v4: typed(specs.acl_ip_v4.name, take(specs.acl_ip_v4.name)?)?,
            acl_ip_v6: typed(specs.acl_ip_v6.name, take(specs.acl_ip_v6.name)?)?,
            acl_v4: typed(specs.acl_v4.name, take(specs.acl_v4.name)?)?,
            acl_v6: typed(specs.acl_v6.name, take(specs.acl_v6.name)?)?,
            port_rules: PortTable::new(specs.port_rules.name, take(specs.port_rules.name)?)?,
            class_rules: typed(specs.class_rules.name, take(specs.class_rules.name)?)?,
            rules: typed(specs.rules.name, take(specs.rules.name)?)?,
            routes: typed(specs.routes.name, take(specs.routes.name)?)?,
            status_rules: typed(specs.status_rules.name, take(specs.status_rules.name)?)?,
        })
    }

    /// Moves this set from `old` to `new`, writing only what differs.
    fn write(&mut self, old: &Tables, new: &Tables) -> Result<(), MapsError> {
        let specs = self.specs;
        sync_hash(
            &mut self.acl_ip_v4,
            &old.acl_ip_v4,
            &new.acl_ip_v4,
            specs.acl_ip_v4.name,
        )?;
        sync_hash(
            &mut self.acl_ip_v6,
            &old.acl_ip_v6,
            &new.acl_ip_v6,
            specs.acl_ip_v6.name,
        )?;
        sync_lpm(
            &mut self.acl_v4,
            &old.acl_v4,
            &new.acl_v4,
            specs.acl_v4.name,
        )?;
        sync_lpm(
            &mut self.acl_v6,
            &old.acl_v6,
            &new.acl_v6,
            specs.acl_v6.name,
        )?;
        self.port_rules.write(old, new)?;
        sync_lpm(
            &mut self.routes,
            &old.routes,
            &new.routes,
            specs.routes.name,
        )?;
        for (class, rules) in new.class_rules.iter().enumerate() {
            if old.class_rules[class] != *rules {
                self.class_rules
                    .set(class as u32, rules, 0)
                    .map_err(ctx(specs.class_rules.name))?;
            }
        }
        for (status, rules) in &new.statuses {
            if old.statuses.get(status) != Some(rules) {
                self.status_rules
                    .set(*status, rules, 0)
                    .map_err(ctx(specs.status_rules.name))?;
            }
        }
        for status in old
            .statuses
            .keys()
            .filter(|s| !new.statuses.contains_key(s))
        {
            self.status_rules
                .set(*status, StatusRules::default(), 0)
                .map_err(ctx(specs.status_rules.name))?;
        }
        for (id, config) in &new.rules {
            if old.rules.get(id) != Some(config) {
                self.rules
                    .set(*id, config, 0)
                    .map_err(ctx(specs.rules.name))?;
            }
        }
        // A removed rule becomes inert (interval 0) and its bans void (epoch 0).
        for id in old.rules.keys().filter(|id| !new.rules.contains_key(id)) {
            self.rules
                .set(*id, RuleConfig::default(), 0)
                .map_err(ctx(specs.rules.name))?;
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), MapsError> {
        let specs = self.specs;
        macro_rules! clear_keyed {
            ($map:expr, $name:expr) => {{
                let keys: Vec<_> = $map.keys().filter_map(Result::ok).collect();
                for key in keys {
                    ignore_missing($map.remove(&key)).map_err(ctx($name))?;
                }
            }};
        }
        clear_keyed!(self.acl_ip_v4, specs.acl_ip_v4.name);
        clear_keyed!(self.acl_ip_v6, specs.acl_ip_v6.name);
        clear_keyed!(self.acl_v4, specs.acl_v4.name);
        clear_keyed!(self.acl_v6, specs.acl_v6.name);
        self.port_rules.clear()?;
        clear_keyed!(self.routes, specs.routes.name);
        for class in 0..agent_common::CLASS_COUNT {
            self.class_rules
                .set(class, PortRules::default(), 0)
                .map_err(ctx(specs.class_rules.name))?;
        }
        for status in 0..STATUS_CODES {
            self.status_rules
                .set(status, StatusRules::default(), 0)
                .map_err(ctx(specs.status_rules.name))?;
        }
        for id in 1..self.rules.len() {
            self.rules
                .set(id, RuleConfig::default(), 0)
                .map_err(ctx(specs.rules.name))?;
        }
        Ok(())
    }
}

/// The policy sets and what they share. Written only by the enforcer.
pub struct PolicyMaps {
    pub(super) sets: [PolicySetMaps; 2],
    pub(super) generation: Array<MapData, u32>,
    pub(super) settings: Array<MapData, Settings>,
    /// Which address hash maps hold entries; the enforcer writes the policy sets' entries.
    pub(super) has_addresses: Array<MapData, u32>,
    pub(super) rule_counters: PerCpuArray<MapData, RuleCounters>,
    /// Possible CPUs: the length of every per-CPU value.
    pub(super) cpus: usize,
}

impl PolicyMaps {
    /// The policy set packets are judged by.
    pub fn generation(&self) -> Result<usize, MapsError> {
        let generation = self
            .generation
            .get(&0, 0)
            .map_err(ctx(names::GENERATION.name))?;
        Ok(usize::from(generation != 0))
    }

    /// Makes `set` the one packets are judged by: a single map write, so every packet sees
    /// either the old set or the new one.
    pub fn switch_to(&mut self, set: usize) -> Result<(), MapsError> {
        self.generation
            .set(0, set as u32, 0)
            .map_err(ctx(names::GENERATION.name))
    }

    /// Writes the difference from `old` to `new` into policy set `set`, which must not be
    /// in force.
    pub fn write_set(&mut self, set: usize, old: &Tables, new: &Tables) -> Result<(), MapsError> {
        self.sets[set].write(old, new)?;
        let mut has = 0;
        if !new.acl_ip_v4.is_empty() {
            has |= names::HAS_V4;
        }
        if !new.acl_ip_v6.is_empty() {
            has |= names::HAS_V6;
        }
        self.has_addresses
            .set(set as u32, has, 0)
            .map_err(ctx(names::HAS_ADDRESSES.name))
    }

    /// Empties policy set `set` (not in force), whatever it holds.
    pub fn clear_set(&mut self, set: usize) -> Result<(), MapsError> {
        self.sets[set].clear()?;
        self.has_addresses
            .set(set as u32, 0, 0)
            .map_err(ctx(names::HAS_ADDRESSES.name))
    }

    /// The maps both sets share: settings, and per-rule counters, which start from zero
    /// for an id that now names another rule (`old_names` and `new_names` by id).
    pub fn update_shared(
        &mut self,
        old_names: &BTreeMap<u32, String>,
        new_names: &BTreeMap<u32, String>,
        new: &Tables,
    ) -> Result<(), MapsError> {
        self.settings
            .set(0, new.settings, 0)
            .map_err(ctx(names::SETTINGS.name))?;
        for (id, name) in new_names {
            if old_names.get(id) != Some(name) {
                let zeros = PerCpuValues::try_from(vec![RuleCounters::default(); self.cpus])
                    .expect("one value per CPU");
                self.rule_counters
                    .set(*id, zeros, 0)
                    .map_err(ctx(names::RULE_COUNTERS.name))?;
            }
        }
        Ok(())
    }
}

/// Moves a hash map from holding `old` to holding `new`, as `sync_lpm` does a trie.
fn sync_hash<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    name: &'static str,
) -> Result<(), MapsError> {
    for (key, value) in new {
        if old.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(ctx(name))?;
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(k)) {
        ignore_missing(map.remove(key)).map_err(ctx(name))?;
    }
    Ok(())
}

/// Moves an LPM trie from holding `old` to holding `new`: inserts what is new or changed,
/// removes what is gone. A key already missing is not an error: the state wanted is reached.
fn sync_lpm<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut LpmTrie<MapData, K, V>,
    old: &BTreeMap<(u32, K), V>,
    new: &BTreeMap<(u32, K), V>,
    name: &'static str,
) -> Result<(), MapsError> {
    for (&(prefix_len, addr), value) in new {
        if old.get(&(prefix_len, addr)) != Some(value) {
            map.insert(&Key::new(prefix_len, addr), value, 0)
                .map_err(ctx(name))?;
        }
    }
    for &(prefix_len, addr) in old.keys().filter(|k| !new.contains_key(k)) {
        ignore_missing(map.remove(&Key::new(prefix_len, addr))).map_err(ctx(name))?;
    }
    Ok(())
}
