//! Allow and deny lists: one longest-prefix-match lookup each, whatever their size.

use agent_common::DenyEntry;
use aya_ebpf::maps::lpm_trie::Key;

use crate::{parse::Packet, policy_set::PolicySet};

#[inline(always)]
pub fn allowed(policy: PolicySet, pkt: &Packet) -> bool {
    if pkt.v4 {
        policy.allow_v4().get(Key::new(32, pkt.src[3])).is_some()
    } else {
        policy.allow_v6().get(Key::new(128, pkt.src)).is_some()
    }
}

#[inline(always)]
pub fn denied(policy: PolicySet, pkt: &Packet) -> Option<DenyEntry> {
    if pkt.v4 {
        policy.deny_v4().get(Key::new(32, pkt.src[3])).copied()
    } else {
        policy.deny_v6().get(Key::new(128, pkt.src)).copied()
    }
}
