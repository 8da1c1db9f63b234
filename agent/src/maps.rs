//! Typed handles on the kernel maps: writing policy tables (only what changed) and reading
//! counters. Works on maps from a freshly loaded object or from their pins.

use agent_common::{
    AclEntry, BanEntry, Bucket, BucketKey, IfaceCounters, MALFORMED_SLOTS, MalformedCause,
    PortRules, REASON_SLOTS, Reason, RuleConfig, RuleCounters, Settings, maps as names,
};
use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use std::collections::BTreeMap;

use crate::tables::Tables;

/// One entry of `BANS_V4` / `BANS_V6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    pub rule: u32,
    pub epoch: u32,
    /// `CLOCK_MONOTONIC` nanoseconds; `u64::MAX` for a ban without an end.
    pub expires_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("cannot count the possible CPUs: {source}")]
    Cpus {
        #[source]
        source: std::io::Error,
    },
    #[error("{net} is already banned")]
    AlreadyBanned { net: IpNet },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

fn ctx(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// One of the two sets of policy maps (see `agent_common::maps`).
struct PolicyMaps {
    set: usize,
    acl_v4: LpmTrie<MapData, [u8; 4], AclEntry>,
    acl_v6: LpmTrie<MapData, [u8; 16], AclEntry>,
    port_rules: HashMap<MapData, u32, PortRules>,
    class_rules: Array<MapData, PortRules>,
    rules: Array<MapData, RuleConfig>,
}

pub struct KernelMaps {
    sets: [PolicyMaps; 2],
    generation: Array<MapData, u32>,
    bans_v4: LpmTrie<MapData, [u8; 4], BanEntry>,
    bans_v6: LpmTrie<MapData, [u8; 16], BanEntry>,
    settings: Array<MapData, Settings>,
    counters: PerCpuArray<MapData, u64>,
    malformed: PerCpuArray<MapData, u64>,
    rule_counters: PerCpuArray<MapData, RuleCounters>,
    iface_counters: PerCpuArray<MapData, IfaceCounters>,
    buckets: HashMap<MapData, BucketKey, Bucket>,
    /// Possible CPUs: the length of every per-CPU value.
    cpus: usize,
}

/// Totals over all CPUs of the `COUNTERS` map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Final verdicts by reason code.
    pub verdicts: [u64; REASON_SLOTS as usize],
    /// Shadow-mode hits (would have dropped) by reason code.
    pub shadow: [u64; REASON_SLOTS as usize],
    /// Malformed frames by `MalformedCause` code.
    pub malformed: [u64; MALFORMED_SLOTS as usize],
    pub events_written: u64,
    pub events_suppressed: u64,
    pub events_lost: u64,
    pub bans_failed: u64,
    pub buckets_created: u64,
}

impl Counters {
    pub fn verdict(&self, reason: Reason) -> u64 {
        self.verdicts[reason as usize]
    }

    pub fn shadowed(&self, reason: Reason) -> u64 {
        self.shadow[reason as usize]
    }

    pub fn malformed(&self, cause: MalformedCause) -> u64 {
        self.malformed[cause.code() as usize]
    }
}

impl PolicyMaps {
    /// Moves this set from `old` to `new`, writing only what differs.
    fn write(&mut self, old: &Tables, new: &Tables) -> Result<(), MapsError> {
        let set = self.set;
        sync_lpm(
            &mut self.acl_v4,
            &old.acl_v4,
            &new.acl_v4,
            names::POLICY_SETS[set].acl_v4.name,
        )?;
        sync_lpm(
            &mut self.acl_v6,
            &old.acl_v6,
            &new.acl_v6,
            names::POLICY_SETS[set].acl_v6.name,
        )?;
        for (port, rules) in &new.port_rules {
            if old.port_rules.get(port) != Some(rules) {
                self.port_rules
                    .insert(port, rules, 0)
                    .map_err(ctx(names::POLICY_SETS[set].port_rules.name))?;
            }
        }
        for port in old
            .port_rules
            .keys()
            .filter(|k| !new.port_rules.contains_key(k))
        {
            ignore_missing(self.port_rules.remove(port))
                .map_err(ctx(names::POLICY_SETS[set].port_rules.name))?;
        }
        for (class, rules) in new.class_rules.iter().enumerate() {
            if old.class_rules[class] != *rules {
                self.class_rules
                    .set(class as u32, rules, 0)
                    .map_err(ctx(names::POLICY_SETS[set].class_rules.name))?;
            }
        }
        for (id, config) in &new.rules {
            if old.rules.get(id) != Some(config) {
                self.rules
                    .set(*id, config, 0)
                    .map_err(ctx(names::POLICY_SETS[set].rules.name))?;
            }
        }
        // A removed rule becomes inert (interval 0) and its bans void (epoch 0).
        for id in old.rules.keys().filter(|id| !new.rules.contains_key(id)) {
            self.rules
                .set(*id, RuleConfig::default(), 0)
                .map_err(ctx(names::POLICY_SETS[set].rules.name))?;
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), MapsError> {
        let set = self.set;
        macro_rules! clear_keyed {
            ($map:expr, $name:expr) => {{
                let keys: Vec<_> = $map.keys().filter_map(Result::ok).collect();
                for key in keys {
                    ignore_missing($map.remove(&key)).map_err(ctx($name))?;
                }
            }};
        }
        clear_keyed!(self.acl_v4, names::POLICY_SETS[set].acl_v4.name);
        clear_keyed!(self.acl_v6, names::POLICY_SETS[set].acl_v6.name);
        clear_keyed!(self.port_rules, names::POLICY_SETS[set].port_rules.name);
        for class in 0..agent_common::CLASS_COUNT {
            self.class_rules
                .set(class, PortRules::default(), 0)
                .map_err(ctx(names::POLICY_SETS[set].class_rules.name))?;
        }
        for id in 1..agent_common::MAX_RULES {
            self.rules
                .set(id, RuleConfig::default(), 0)
                .map_err(ctx(names::POLICY_SETS[set].rules.name))?;
        }
        Ok(())
    }
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Self::open(|name| ebpf.take_map(name).ok_or(MapsError::Missing { name }))
    }

    fn open(
        mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        macro_rules! typed {
            ($name:expr) => {{
                let name: &'static str = $name;
                get(name)?.try_into().map_err(ctx(name))?
            }};
        }
        let mut set = |set: usize| -> Result<PolicyMaps, MapsError> {
            Ok(PolicyMaps {
                set,
                acl_v4: typed!(names::POLICY_SETS[set].acl_v4.name),
                acl_v6: typed!(names::POLICY_SETS[set].acl_v6.name),
                port_rules: typed!(names::POLICY_SETS[set].port_rules.name),
                class_rules: typed!(names::POLICY_SETS[set].class_rules.name),
                rules: typed!(names::POLICY_SETS[set].rules.name),
            })
        };
        let sets = [set(0)?, set(1)?];
        Ok(Self {
            sets,
            generation: typed!(names::GENERATION.name),
            bans_v4: typed!(names::BANS_V4.name),
            bans_v6: typed!(names::BANS_V6.name),
            settings: typed!(names::SETTINGS.name),
            counters: typed!(names::COUNTERS.name),
            malformed: typed!(names::MALFORMED.name),
            rule_counters: typed!(names::RULE_COUNTERS.name),
            iface_counters: typed!(names::IFACE_COUNTERS.name),
            buckets: typed!(names::BUCKETS.name),
            cpus: aya::util::nr_cpus().map_err(|(_, source)| MapsError::Cpus { source })?,
        })
    }

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
        self.sets[set].write(old, new)
    }

    /// Empties policy set `set` (not in force), whatever it holds.
    pub fn clear_set(&mut self, set: usize) -> Result<(), MapsError> {
        self.sets[set].clear()
    }

    /// The maps both sets share: settings, and per-rule counters, which start from zero
    /// for an id that now names another rule.
    pub fn update_shared(
        &mut self,
        old_names: &std::collections::BTreeMap<u32, String>,
        new: &Tables,
    ) -> Result<(), MapsError> {
        self.settings
            .set(0, new.settings, 0)
            .map_err(ctx(names::SETTINGS.name))?;
        for (id, name) in &new.names {
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
    pub fn counters(&self) -> Result<Counters, MapsError> {
        let total = |index: u32| -> Result<u64, MapsError> {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(ctx(names::COUNTERS.name))?;
            Ok(values.iter().sum())
        };
        let mut counters = Counters::default();
        for slot in 0..REASON_SLOTS {
            counters.verdicts[slot as usize] = total(slot)?;
            counters.shadow[slot as usize] = total(REASON_SLOTS + slot)?;
        }
        for cause in MalformedCause::ALL {
            let values = self
                .malformed
                .get(&cause.code(), 0)
                .map_err(ctx(names::MALFORMED.name))?;
            counters.malformed[cause.code() as usize] = values.iter().sum();
        }
        counters.events_written = total(names::COUNTER_EVENTS_WRITTEN)?;
        counters.events_suppressed = total(names::COUNTER_EVENTS_SUPPRESSED)?;
        counters.events_lost = total(names::COUNTER_EVENTS_LOST)?;
        counters.bans_failed = total(names::COUNTER_BANS_FAILED)?;
        counters.buckets_created = total(names::COUNTER_BUCKETS_CREATED)?;
        Ok(counters)
    }

    /// Per-rule counters summed over CPUs, for the given ids, leaving out those that
    /// counted nothing.
    pub fn rule_counters(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<Vec<(u32, RuleCounters)>, MapsError> {
        let mut out = Vec::new();
        for id in ids {
            let values = self
                .rule_counters
                .get(&id, 0)
                .map_err(ctx(names::RULE_COUNTERS.name))?;
            let sum = values
                .iter()
                .fold(RuleCounters::default(), |acc, v| RuleCounters {
                    passed: acc.passed + v.passed,
                    dropped: acc.dropped + v.dropped,
                    shadowed: acc.shadowed + v.shadowed,
                });
            if sum != RuleCounters::default() {
                out.push((id, sum));
            }
        }
        Ok(out)
    }

    /// Packets counted for the interface `ifindex` (its slot, shared with any interface
    /// whose index is equal modulo `IFACE_SLOTS`).
    pub fn iface_counters(&self, ifindex: u32) -> Result<IfaceCounters, MapsError> {
        let values = self
            .iface_counters
            .get(&(ifindex % names::IFACE_SLOTS), 0)
            .map_err(ctx(names::IFACE_COUNTERS.name))?;
        Ok(values
            .iter()
            .fold(IfaceCounters::default(), |acc, v| IfaceCounters {
                passed: acc.passed + v.passed,
                dropped: acc.dropped + v.dropped,
            }))
    }

    /// Token buckets in the LRU map now (one key walk: fine for a scrape, not a hot path).
    pub fn bucket_count(&self) -> usize {
        self.buckets.keys().filter(Result::is_ok).count()
    }

    /// Every ban in the maps, expired or not (the sweep removes expired ones).
    pub fn bans(&self) -> Result<Vec<Ban>, MapsError> {
        let ban = |net: IpNet, entry: BanEntry| Ban {
            net,
            rule: entry.rule,
            epoch: entry.epoch,
            expires_ns: entry.expires_ns,
        };
        let mut bans = Vec::new();
        for entry in self.bans_v4.iter() {
            let (key, entry) = entry.map_err(ctx(names::BANS_V4.name))?;
            let net = Ipv4Net::new(key.data().into(), key.prefix_len() as u8)
                .expect("the kernel only stores valid prefixes");
            bans.push(ban(net.into(), entry));
        }
        for entry in self.bans_v6.iter() {
            let (key, entry) = entry.map_err(ctx(names::BANS_V6.name))?;
            let net = Ipv6Net::new(key.data().into(), key.prefix_len() as u8)
                .expect("the kernel only stores valid prefixes");
            bans.push(ban(net.into(), entry));
        }
        Ok(bans)
    }

    /// Bans `net` under `BLOCK_RULE` until `expires_ns`. Fails if that exact prefix is
    /// already banned.
    pub fn block(&mut self, net: IpNet, expires_ns: u64) -> Result<(), MapsError> {
        let ban = BanEntry {
            expires_ns,
            rule: agent_common::BLOCK_RULE,
            epoch: agent_common::BLOCK_EPOCH,
        };
        let result = match net {
            IpNet::V4(n) => self
                .bans_v4
                .insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    ban,
                    BPF_NOEXIST,
                )
                .map_err(ctx(names::BANS_V4.name)),
            IpNet::V6(n) => self
                .bans_v6
                .insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    ban,
                    BPF_NOEXIST,
                )
                .map_err(ctx(names::BANS_V6.name)),
        };
        match result {
            Err(MapsError::Map {
                source: MapError::SyscallError(e),
                ..
            }) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Err(MapsError::AlreadyBanned { net })
            }
            other => other,
        }
    }

    /// Lifts the ban on exactly `net`; false if there was none.
    pub fn unban(&mut self, net: IpNet) -> Result<bool, MapsError> {
        let result = match net {
            IpNet::V4(n) => self
                .bans_v4
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets()))
                .map_err(ctx(names::BANS_V4.name)),
            IpNet::V6(n) => self
                .bans_v6
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets()))
                .map_err(ctx(names::BANS_V6.name)),
        };
        match result {
            Ok(()) => Ok(true),
            Err(MapsError::Map { source, .. }) if is_missing(&source) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes bans whose time is up, so the map does not fill with dead entries (the
    /// kernel already ignores them). Returns how many were removed.
    pub fn sweep_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        let expired_v4: Vec<Key<[u8; 4]>> = self
            .bans_v4
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, ban)| ban.expires_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        let expired_v6: Vec<Key<[u8; 16]>> = self
            .bans_v6
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, ban)| ban.expires_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        let removed = expired_v4.len() + expired_v6.len();
        for key in expired_v4 {
            ignore_missing(self.bans_v4.remove(&key)).map_err(ctx(names::BANS_V4.name))?;
        }
        for key in expired_v6 {
            ignore_missing(self.bans_v6.remove(&key)).map_err(ctx(names::BANS_V6.name))?;
        }
        Ok(removed)
    }
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

/// `BPF_NOEXIST` from the kernel's uapi: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// True for "no such key": what removing an absent entry returns.
fn is_missing(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(e) if is_missing(&e) => Ok(()),
        other => other,
    }
}

/// Attached interfaces whose counters share a slot of `IFACE_COUNTERS` (their indexes are
/// equal modulo `IFACE_SLOTS`): their packets are counted together, which the agent warns
/// about at start.
pub fn shared_counter_slots(ifaces: &[(String, u32)]) -> Vec<(String, String)> {
    let mut shared = Vec::new();
    for (i, (a, a_index)) in ifaces.iter().enumerate() {
        for (b, b_index) in &ifaces[i + 1..] {
            if a_index % names::IFACE_SLOTS == b_index % names::IFACE_SLOTS {
                shared.push((a.clone(), b.clone()));
            }
        }
    }
    shared
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_whose_indexes_meet_modulo_the_slots_share_counters() {
        let ifaces = [
            ("eth0".to_string(), 2),
            ("eth1".to_string(), 3),
            ("bond0".to_string(), 2 + names::IFACE_SLOTS),
        ];
        assert_eq!(
            shared_counter_slots(&ifaces),
            [("eth0".to_string(), "bond0".to_string())]
        );
        assert!(shared_counter_slots(&ifaces[..2]).is_empty());
    }
}
