//! Detector decisions (CrowdSec bans): always enforced, in maps of their own that the agent
//! keeps in step with the detector's Local API, checked after operator blocks: decisions
//! on one address in hash maps, on wider prefixes in LPM tries.

use agent_common::maps::{DECISION_ADDRESSES, EMPTY_DECISION_RANGES};

use crate::{
    by_source::SourceMaps,
    clock, empty,
    maps::{DECISION_IP_V4, DECISION_IP_V6, DECISIONS_V4, DECISIONS_V6, HAS_ADDRESSES},
    parse::Packet,
};

/// The origin code of the decision that covers the packet's source and has not ended. An
/// ended one is left for the agent, which lifts it.
#[inline(always)]
pub fn active(pkt: &Packet) -> Option<u32> {
    let has = HAS_ADDRESSES.get(DECISION_ADDRESSES).copied().unwrap_or(0);
    let decision = SourceMaps {
        address_v4: &DECISION_IP_V4,
        address_v6: &DECISION_IP_V6,
        prefix_v4: &DECISIONS_V4,
        prefix_v6: &DECISIONS_V6,
    }
    .lookup(pkt, has, !empty::marked(EMPTY_DECISION_RANGES))?;
    // Decisions last minutes or more: the coarse clock (one tick behind at most) will do.
    (clock::coarse_ns() < decision.expires_ns).then_some(decision.origin)
}
