//! Detector decisions (CrowdSec bans): always enforced, in maps of their own that the agent
//! keeps in step with the detector's Local API, checked after operator blocks.

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    clock,
    maps::{DECISIONS_V4, DECISIONS_V6},
    parse::Packet,
};

/// The origin code of the decision that covers the packet's source and has not ended. An
/// ended one is left for the agent, which lifts it.
#[inline(always)]
pub fn active(pkt: &Packet) -> Option<u32> {
    let decision = if pkt.v4 {
        DECISIONS_V4.get(Key::new(32, pkt.src[3]))
    } else {
        DECISIONS_V6.get(Key::new(128, pkt.src))
    }?;
    // Decisions last minutes or more: the coarse clock (one tick behind at most) will do.
    (clock::coarse_ns() < decision.expires_ns).then_some(decision.origin)
}
