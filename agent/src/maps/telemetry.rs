//! What telemetry reads from the kernel: counters, per-rule and per-interface counters,
//! the ban listing, occupancy. Read-only: shared by `stats`, `/metrics`, readiness and the
//! summaries without going through the agent's main loop.

use agent_common::{
    BLOCK_EPOCH, BLOCK_RULE, BanEntry, BlockEntry, IfaceCounters, MALFORMED_SLOTS, MalformedCause,
    REASON_SLOTS, Reason, RuleCounters,
};
use aya::maps::{MapData, PerCpuArray, lpm_trie::LpmTrie};
use ipnet::IpNet;

use super::{MapsError, ctx, decisions::DecisionTables, lpm_entries, names};

/// One entry of `BANS_V4` / `BANS_V6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub net: IpNet,
    pub origin: Origin,
    /// The rule it is counted under (`BLOCK_RULE` for blocks, 0 for decisions).
    pub rule: u32,
    pub epoch: u32,
    /// `CLOCK_MONOTONIC` nanoseconds; `u64::MAX` for a ban without an end.
    pub expires_ns: u64,
}

/// Who made a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An operator, with `portcullis block`.
    Block,
    /// A rule's escalation, in the kernel.
    Escalation,
    /// A detector's decision (CrowdSec), from the origin it names.
    Decision(agent_common::decision::Origin),
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
    /// Buckets a new one replaced in a full set.
    pub bucket_evictions: u64,
    /// Packets of sources without a bucket (see `agent_common::admission`).
    pub unadmitted: u64,
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
    pub(super) buckets: super::bucket_count::BucketCount,
    pub(super) bans_v4: LpmTrie<MapData, [u8; 4], BanEntry>,
    pub(super) bans_v6: LpmTrie<MapData, [u8; 16], BanEntry>,
    pub(super) blocks_v4: LpmTrie<MapData, [u8; 4], BlockEntry>,
    pub(super) blocks_v6: LpmTrie<MapData, [u8; 16], BlockEntry>,
    pub(super) decisions: DecisionTables,
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
        counters.bucket_evictions = total(names::COUNTER_BUCKET_EVICTIONS)?;
        counters.unadmitted = total(names::COUNTER_UNADMITTED)?;
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

    /// Token buckets in `BUCKETS`.
    pub fn count_buckets(&self) -> Result<usize, MapsError> {
        self.buckets.count()
    }

    /// Every block, ban and decision in the maps, ended or not.
    pub fn bans(&self) -> Result<Vec<Ban>, MapsError> {
        let mut all = self.blocks_and_bans()?;
        all.extend(self.decisions()?);
        Ok(all)
    }

    /// Every block and escalation ban, ended or not (the sweep removes ended ones): what
    /// the census counts and a node shares, without reading the decision maps (a community
    /// blocklist's hundreds of thousands of entries).
    pub fn blocks_and_bans(&self) -> Result<Vec<Ban>, MapsError> {
        let blocks = lpm_entries(&self.blocks_v4, &self.blocks_v6)?
            .into_iter()
            .map(|(net, block)| Ban {
                net,
                origin: Origin::Block,
                rule: BLOCK_RULE,
                epoch: BLOCK_EPOCH,
                expires_ns: block.expires_ns,
            });
        let bans = lpm_entries(&self.bans_v4, &self.bans_v6)?
            .into_iter()
            .map(|(net, ban)| Ban {
                net,
                origin: Origin::Escalation,
                rule: ban.rule,
                epoch: ban.epoch,
                expires_ns: ban.expires_ns,
            });
        Ok(blocks.chain(bans).collect())
    }

    /// Every detector decision, ended or not (the decision sync lifts ended ones).
    pub fn decisions(&self) -> Result<Vec<Ban>, MapsError> {
        let decisions = self
            .decisions
            .entries()?
            .into_iter()
            .map(|(net, decision)| Ban {
                net,
                origin: Origin::Decision(agent_common::decision::Origin::from_code(
                    decision.origin,
                )),
                rule: 0,
                epoch: 0,
                expires_ns: decision.expires_ns,
            });
        Ok(decisions.collect())
    }
}
