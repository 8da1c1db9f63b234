//! Detector decisions (CrowdSec bans): always enforced, in maps of their own that the agent
//! keeps in step with the detector's Local API, checked after operator blocks: decisions
//! on one address in hash maps, on wider prefixes in LPM tries.

use agent_common::maps::{DECISION_ADDRESSES, HAS_V4, HAS_V6};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    clock,
    maps::{DECISION_IP_V4, DECISION_IP_V6, DECISIONS_V4, DECISIONS_V6, HAS_ADDRESSES},
    parse::Packet,
};

/// The origin code of the decision that covers the packet's source and has not ended. An
/// ended one is left for the agent, which lifts it. A decision on the address itself is
/// the longest match there can be, so the ranges are looked up only without one.
#[inline(always)]
pub fn active(pkt: &Packet) -> Option<u32> {
    // Only when there are addresses: a lookup in an empty hash map still costs a miss.
    let has = HAS_ADDRESSES.get(DECISION_ADDRESSES).copied().unwrap_or(0);
    // SAFETY: the value is copied out at once; the agent may delete the entry after.
    let address = if pkt.v4 {
        if has & HAS_V4 != 0 {
            unsafe { DECISION_IP_V4.get(pkt.src[3]) }.copied()
        } else {
            None
        }
    } else if has & HAS_V6 != 0 {
        unsafe { DECISION_IP_V6.get(pkt.src) }.copied()
    } else {
        None
    };
    let decision = match address {
        Some(decision) => decision,
        None if pkt.v4 => *DECISIONS_V4.get(Key::new(32, pkt.src[3]))?,
        None => *DECISIONS_V6.get(Key::new(128, pkt.src))?,
    };
    // Decisions last minutes or more: the coarse clock (one tick behind at most) will do.
    (clock::coarse_ns() < decision.expires_ns).then_some(decision.origin)
}
