//! Allow and deny lists: one longest-prefix-match lookup each, whatever their size.

use agent_common::DenyEntry;
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, DENY_V4, DENY_V6},
    parse::Packet,
};

#[inline(always)]
pub fn allowed(pkt: &Packet) -> bool {
    if pkt.v4 {
        ALLOW_V4.get(Key::new(32, pkt.src[3])).is_some()
    } else {
        ALLOW_V6.get(Key::new(128, pkt.src)).is_some()
    }
}

#[inline(always)]
pub fn denied(pkt: &Packet) -> Option<DenyEntry> {
    if pkt.v4 {
        DENY_V4.get(Key::new(32, pkt.src[3])).copied()
    } else {
        DENY_V6.get(Key::new(128, pkt.src)).copied()
    }
}
