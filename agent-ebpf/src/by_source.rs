//! Maps keyed by a packet's source address, as the allow/deny lists and the detector
//! decisions keep them: single addresses in hash maps, wider prefixes in LPM tries. An
//! address's own entry is the longest match there is, so the trie is looked up only
//! without one; and a hash map only while `HAS_ADDRESSES` marks it non-empty, since a
//! lookup in an empty one still reads a random bucket (a cache and TLB miss under a
//! spoofed flood).

use agent_common::maps::{HAS_V4, HAS_V6};
use aya_ebpf::maps::{HashMap, LpmTrie, lpm_trie::Key};

use crate::parse::Packet;

pub struct SourceMaps<V: 'static> {
    pub address_v4: &'static HashMap<u32, V>,
    pub address_v6: &'static HashMap<[u32; 4], V>,
    pub prefix_v4: &'static LpmTrie<u32, V>,
    pub prefix_v6: &'static LpmTrie<[u32; 4], V>,
}

impl<V: Copy> SourceMaps<V> {
    /// The entry that covers `pkt`'s source; `has`: the `HAS_ADDRESSES` bits of these
    /// maps' address hash maps; `prefixes`: false when the tries are known to be empty.
    #[inline(always)]
    pub fn lookup(&self, pkt: &Packet, has: u32, prefixes: bool) -> Option<V> {
        // SAFETY: the values are copied out at once.
        if pkt.v4 {
            if has & HAS_V4 != 0
                && let Some(entry) = unsafe { self.address_v4.get(pkt.src[3]) }
            {
                return Some(*entry);
            }
            if !prefixes {
                return None;
            }
            self.prefix_v4.get(Key::new(32, pkt.src[3])).copied()
        } else {
            if has & HAS_V6 != 0
                && let Some(entry) = unsafe { self.address_v6.get(pkt.src) }
            {
                return Some(*entry);
            }
            if !prefixes {
                return None;
            }
            self.prefix_v6.get(Key::new(128, pkt.src)).copied()
        }
    }
}
