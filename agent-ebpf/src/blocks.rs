//! Operator blocks (`portcullis block`): always enforced, in maps of their own, so an
//! escalation ban (even a shadow one on a longer prefix) can neither hide nor crowd one out.

use agent_common::maps::EMPTY_BLOCKS;
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    clock, empty,
    maps::{BLOCKS_V4, BLOCKS_V6},
    parse::Packet,
};

/// True if a block covers the packet's source and has not ended. An ended block is left for
/// the agent's sweep, which knows its exact key.
#[inline(always)]
pub fn active(pkt: &Packet) -> bool {
    if empty::marked(EMPTY_BLOCKS) {
        return false;
    }
    let block = if pkt.v4 {
        BLOCKS_V4.get(Key::new(32, pkt.src[3]))
    } else {
        BLOCKS_V6.get(Key::new(128, pkt.src))
    };
    // Block times are seconds or more: the coarse clock (one tick behind at most) will do.
    block.is_some_and(|block| clock::coarse_ns() < block.expires_ns)
}
