//! Allow and deny lists: one longest-prefix match for both, whatever their size.
//! Validation refuses a deny entry inside an allow entry, so when both lists cover a
//! source the allow entry is the longer prefix, and the longest match is the answer.
//! Entries of one address are in a hash map, looked up first (see `by_source`); the trie
//! holds the wider ones.

use agent_common::AclEntry;

use crate::{by_source::SourceMaps, maps::HAS_ADDRESSES, parse::Packet, policy_set::PolicySet};

#[inline(always)]
pub fn lookup<const S: bool>(policy: PolicySet<S>, pkt: &Packet) -> Option<AclEntry> {
    // The agent writes only the set not in force, this set's mark included.
    let has = HAS_ADDRESSES.get(policy.index()).copied().unwrap_or(0);
    SourceMaps {
        address_v4: policy.acl_ip_v4(),
        address_v6: policy.acl_ip_v6(),
        prefix_v4: policy.acl_v4(),
        prefix_v6: policy.acl_v6(),
    }
    .lookup(pkt, has, true)
}
