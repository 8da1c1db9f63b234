//! What telemetry reads from the kernel: counters, per-rule and per-interface counters,
//! the ban listing, occupancy. Read-only: shared by `stats`, `/metrics`, readiness and the
//! summaries without going through the agent's main loop.

use agent_common::{
    BanEntry, Bucket, BucketKey, IfaceCounters, MALFORMED_SLOTS, MalformedCause, REASON_SLOTS,
    Reason, RuleCounters,
};
use aya::maps::{HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{MapsError, ctx, names};

/// One entry of `BANS_V4` / `BANS_V6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    pub rule: u32,
    pub epoch: u32,
    /// `CLOCK_MONOTONIC` nanoseconds; `u64::MAX` for a ban without an end.
    pub expires_ns: u64,
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

pub struct TelemetryMaps {
    pub(super) counters: PerCpuArray<MapData, u64>,
    pub(super) malformed: PerCpuArray<MapData, u64>,
    pub(super) rule_counters: PerCpuArray<MapData, RuleCounters>,
    pub(super) iface_counters: PerCpuArray<MapData, IfaceCounters>,
    pub(super) buckets: HashMap<MapData, BucketKey, Bucket>,
    pub(super) bans_v4: LpmTrie<MapData, [u8; 4], BanEntry>,
    pub(super) bans_v6: LpmTrie<MapData, [u8; 16], BanEntry>,
}

impl TelemetryMaps {
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
}
