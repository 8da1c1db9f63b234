//! Allow and deny lists: one longest-prefix-match lookup for both, whatever their size.
//! Validation refuses a deny entry inside an allow entry, so when both lists cover a
//! source the allow entry is the longer prefix, and the longest match is the answer.

use agent_common::AclEntry;
use aya_ebpf::maps::lpm_trie::Key;

use crate::{parse::Packet, policy_set::PolicySet};

#[inline(always)]
pub fn lookup(policy: PolicySet, pkt: &Packet) -> Option<AclEntry> {
    if pkt.v4 {
        policy.acl_v4().get(Key::new(32, pkt.src[3])).copied()
    } else {
        policy.acl_v6().get(Key::new(128, pkt.src)).copied()
    }
}
