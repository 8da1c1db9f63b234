//! Detector decisions (CrowdSec bans): always enforced, in maps of their own that the agent
//! keeps in step with the detector's Local API, checked after operator blocks: decisions
//! on one address in hash maps, on wider prefixes in LPM tries.

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    clock,
    maps::{DECISION_IP_V4, DECISION_IP_V6, DECISIONS_V4, DECISIONS_V6},
    parse::Packet,
};

/// The origin code of the decision that covers the packet's source and has not ended. An
/// ended one is left for the agent, which lifts it. A decision on the address itself is
/// the longest match there can be, so the ranges are looked up only without one.
#[inline(always)]
pub fn active(pkt: &Packet) -> Option<u32> {
    // SAFETY: the value is copied out at once; the agent may delete the entry after.
    let decision = if pkt.v4 {
        match unsafe { DECISION_IP_V4.get(pkt.src[3]) } {
            Some(decision) => *decision,
            None => *DECISIONS_V4.get(Key::new(32, pkt.src[3]))?,
        }
    } else {
        match unsafe { DECISION_IP_V6.get(pkt.src) } {
            Some(decision) => *decision,
            None => *DECISIONS_V6.get(Key::new(128, pkt.src))?,
        }
    };
    // Decisions last minutes or more: the coarse clock (one tick behind at most) will do.
    (clock::coarse_ns() < decision.expires_ns).then_some(decision.origin)
}
