//! Typed handles on the kernel maps, handed out by who may touch them: the policy sets
//! (`policy`, written only by the enforcer), bans and blocks (`bans`, their own writer),
//! detector decisions (`decisions`, written only by the decision sync), and everything
//! telemetry reads (`telemetry`, read-only: counters, the ban listing,
//! occupancy). Nothing else reaches a map.

mod bans;
mod bucket_count;
mod decisions;
mod empty_mark;
mod policy;
mod port_table;
mod telemetry;

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
};

pub use bans::{BanMaps, Swept};
pub use decisions::DecisionMaps;
use empty_mark::EmptyMark;
pub use policy::PolicyMaps;
pub use telemetry::{Ban, Counters, Origin, TelemetryMaps};

use agent_common::maps as names;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("cannot count the possible CPUs: {source}")]
    Cpus {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot duplicate a map descriptor: {source}")]
    Duplicate {
        #[source]
        source: std::io::Error,
    },
    #[error("map {name} is not an array")]
    NotAnArray { name: &'static str },
    #[error("cannot map {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{net} is already banned")]
    AlreadyBanned { net: ipnet::IpNet },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

pub(crate) fn ctx(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// The maps of a loaded object, split by who may touch them.
pub struct KernelMaps {
    pub policy: PolicyMaps,
    pub bans: BanMaps,
    pub decisions: DecisionMaps,
    pub telemetry: TelemetryMaps,
}

impl KernelMaps {
    /// Takes the maps out of a loaded object. Maps both a writer and telemetry use (bans,
    /// per-rule counters) get a second descriptor for the reader.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing { name });
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| MapsError::Cpus { source })?;
        let sets = [
            policy::PolicySetMaps::take(&mut take, &names::POLICY_SETS[0])?,
            policy::PolicySetMaps::take(&mut take, &names::POLICY_SETS[1])?,
        ];
        let rule_counters = take(names::RULE_COUNTERS.name)?;
        let bans_v4 = take(names::BANS_V4.name)?;
        let bans_v6 = take(names::BANS_V6.name)?;
        let blocks_v4 = take(names::BLOCKS_V4.name)?;
        let blocks_v6 = take(names::BLOCKS_V6.name)?;
        let decisions = decisions::DecisionMapsTaken::take(&mut take)?;
        let has_addresses = take(names::HAS_ADDRESSES.name)?;
        let empty_tries = take(names::EMPTY_TRIES.name)?;
        let mark = |entry, map| {
            typed(names::EMPTY_TRIES.name, map).map(|marks| EmptyMark::new(marks, entry))
        };
        let telemetry = TelemetryMaps {
            counters: typed(names::COUNTERS.name, take(names::COUNTERS.name)?)?,
            malformed: typed(names::MALFORMED.name, take(names::MALFORMED.name)?)?,
            rule_counters: typed(names::RULE_COUNTERS.name, second_handle(&rule_counters)?)?,
            iface_counters: typed(
                names::IFACE_COUNTERS.name,
                take(names::IFACE_COUNTERS.name)?,
            )?,
            buckets: bucket_count::BucketCount::new(take(names::BUCKETS.name)?)?,
            bans_v4: typed(names::BANS_V4.name, second_handle(&bans_v4)?)?,
            bans_v6: typed(names::BANS_V6.name, second_handle(&bans_v6)?)?,
            blocks_v4: typed(names::BLOCKS_V4.name, second_handle(&blocks_v4)?)?,
            blocks_v6: typed(names::BLOCKS_V6.name, second_handle(&blocks_v6)?)?,
            decisions: decisions.second()?,
        };
        let policy = PolicyMaps {
            sets,
            generation: typed(names::GENERATION.name, take(names::GENERATION.name)?)?,
            settings: typed(names::SETTINGS.name, take(names::SETTINGS.name)?)?,
            has_addresses: typed(names::HAS_ADDRESSES.name, second_handle(&has_addresses)?)?,
            rule_counters: typed(names::RULE_COUNTERS.name, rule_counters)?,
            cpus,
        };
        let mut bans = BanMaps {
            blocks_v4: typed(names::BLOCKS_V4.name, blocks_v4)?,
            blocks_v6: typed(names::BLOCKS_V6.name, blocks_v6)?,
            bans_v4: typed(names::BANS_V4.name, bans_v4)?,
            bans_v6: typed(names::BANS_V6.name, bans_v6)?,
            blocks_empty: mark(names::EMPTY_BLOCKS, second_handle(&empty_tries)?)?,
            bans_empty: mark(names::EMPTY_BANS, second_handle(&empty_tries)?)?,
        };
        let mut decisions = DecisionMaps {
            tables: decisions.typed()?,
            has_addresses: typed(names::HAS_ADDRESSES.name, has_addresses)?,
            has: 0,
            ranges_empty: mark(names::EMPTY_DECISION_RANGES, empty_tries)?,
        };
        // Pinned blocks, bans and decisions an earlier agent left are enforced from the
        // start, and the marks an agent that did not keep them left are redone.
        bans.refresh_marks()?;
        decisions.refresh_marks()?;
        Ok(Self {
            policy,
            bans,
            decisions,
            telemetry,
        })
    }
}

/// Every entry of an IPv4 and an IPv6 LPM trie, by prefix.
pub(crate) fn lpm_entries<V: aya::Pod>(
    v4: &aya::maps::LpmTrie<MapData, [u8; 4], V>,
    v6: &aya::maps::LpmTrie<MapData, [u8; 16], V>,
) -> Result<Vec<(ipnet::IpNet, V)>, MapsError> {
    let mut entries = Vec::new();
    for entry in v4.iter() {
        let (key, value) = entry.map_err(ctx("an IPv4 LPM trie"))?;
        let net = ipnet::Ipv4Net::new(key.data().into(), key.prefix_len() as u8)
            .expect("the kernel only stores valid prefixes");
        entries.push((net.into(), value));
    }
    for entry in v6.iter() {
        let (key, value) = entry.map_err(ctx("an IPv6 LPM trie"))?;
        let net = ipnet::Ipv6Net::new(key.data().into(), key.prefix_len() as u8)
            .expect("the kernel only stores valid prefixes");
        entries.push((net.into(), value));
    }
    Ok(entries)
}

/// A map as its typed handle.
fn typed<T: TryFrom<Map, Error = MapError>>(name: &'static str, map: Map) -> Result<T, MapsError> {
    T::try_from(map).map_err(ctx(name))
}

/// A second handle on the same kernel map, through a duplicated descriptor (getting one by
/// map id would need CAP_SYS_ADMIN, which the agent does not have in Kubernetes).
fn second_handle(map: &Map) -> Result<Map, MapsError> {
    let (name, data): (&'static str, &MapData) = match map {
        Map::LpmTrie(data) => ("LPM trie", data),
        Map::PerCpuArray(data) => ("per-CPU array", data),
        Map::HashMap(data) => ("hash", data),
        Map::Array(data) => ("array", data),
        other => panic!("no second handle is taken on {other:?}"),
    };
    let fd = std::os::fd::AsFd::as_fd(data.fd())
        .try_clone_to_owned()
        .map_err(|source| MapsError::Duplicate { source })?;
    let data = MapData::from_fd(fd).map_err(ctx(name))?;
    Map::from_map_data(data).map_err(ctx(name))
}

/// `BPF_NOEXIST` from the kernel's uapi: insert only if the key is absent.
pub(crate) const BPF_NOEXIST: u64 = 1;

/// True for "no such key": what removing an absent entry returns.
pub(crate) fn is_missing(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

pub(crate) fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
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
