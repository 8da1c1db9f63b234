//! Allow and deny lists: one longest-prefix match for both, whatever their size.
//! Validation refuses a deny entry inside an allow entry, so when both lists cover a
//! source the allow entry is the longer prefix, and the longest match is the answer.
//! Entries of one address are in a hash map, looked up first (an address's own entry is
//! the longest match there is); the trie holds the wider ones.

use agent_common::AclEntry;
use aya_ebpf::maps::lpm_trie::Key;

use agent_common::maps::{HAS_V4, HAS_V6};

use crate::{maps::HAS_ADDRESSES, parse::Packet, policy_set::PolicySet};

#[inline(always)]
pub fn lookup(policy: PolicySet, pkt: &Packet) -> Option<AclEntry> {
    // Only when the set has addresses: a lookup in an empty hash map still costs a miss.
    let has = HAS_ADDRESSES.get(policy.index()).copied().unwrap_or(0);
    // SAFETY: the values are copied out at once; the agent writes only the set not in force.
    if pkt.v4 {
        if has & HAS_V4 != 0
            && let Some(entry) = unsafe { policy.acl_ip_v4().get(pkt.src[3]) }
        {
            return Some(*entry);
        }
        policy.acl_v4().get(Key::new(32, pkt.src[3])).copied()
    } else {
        if has & HAS_V6 != 0
            && let Some(entry) = unsafe { policy.acl_ip_v6().get(pkt.src) }
        {
            return Some(*entry);
        }
        policy.acl_v6().get(Key::new(128, pkt.src)).copied()
    }
}
