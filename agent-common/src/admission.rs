//! Admission of new sources to the bucket map. A source group gets a bucket only from its
//! second packet within the rule's burst window; its first packet is remembered in one slot
//! of `ADMISSION`, a fixed array shared by every CPU, and passes (a new source's bucket is
//! full anyway). A flood of one-packet sources (spoofed, or sprayed over an IPv6 /48) then
//! writes slots of this array instead of inserting buckets, so it cannot push the buckets
//! of established sources out of `BUCKETS`, nor win a fresh burst by evicting its own.
//!
//! The kernel and the reference model share these functions, so the model knows which
//! groups share a slot.

/// Slots of `ADMISSION`: 512 KiB. A power of two.
pub const SLOTS: u32 = 1 << 16;

/// A slot holds a 20-bit tag of the group's hash above a 44-bit time in units of 1,024 ns
/// (wrapping every ~208 days); 0 is an empty slot.
const TIME_BITS: u32 = 44;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const TIME_SHIFT: u32 = 10;

/// The longest window a slot can tell: half the time field's wrap.
pub const MAX_WINDOW_NS: u64 = (TIME_MASK / 2) << TIME_SHIFT;

/// The slot of the group hashed to `hash` (`buckets::group_hash`) and the tag that tells
/// it from other groups sharing the slot.
#[inline(always)]
pub fn slot(hash: u64) -> (u32, u64) {
    ((hash as u32) & (SLOTS - 1), hash >> TIME_BITS)
}

/// The slot value remembering a packet of the group tagged `tag` at `now_ns`.
#[inline(always)]
pub fn entry(tag: u64, now_ns: u64) -> u64 {
    (tag << TIME_BITS) | ((now_ns >> TIME_SHIFT) & TIME_MASK)
}

/// When the packet remembered in `value` arrived, if `value` is `tag`'s and no more than
/// `window_ns` before `now_ns` (to within 1,024 ns).
#[inline(always)]
pub fn remembered(value: u64, tag: u64, window_ns: u64, now_ns: u64) -> Option<u64> {
    if value == 0 || value >> TIME_BITS != tag {
        return None;
    }
    let ago = ((now_ns >> TIME_SHIFT).wrapping_sub(value) & TIME_MASK) << TIME_SHIFT;
    (ago < window_ns.min(MAX_WINDOW_NS)).then(|| now_ns - ago)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BucketKey, buckets::group_hash};

    fn key(rule: u32, last: u32) -> u64 {
        group_hash(&BucketKey {
            rule,
            addr: [0, 0, 0xffff_0000u32.to_be(), last],
        })
    }

    #[test]
    fn a_remembered_packet_is_found_within_its_window_only() {
        let (_, tag) = slot(key(1, 7));
        let then = 5_000_000_000;
        let value = entry(tag, then);
        let found = remembered(value, tag, 1_000_000, then + 999_000).unwrap();
        assert!(then - found < 1024, "{found} is not {then}");
        assert_eq!(remembered(value, tag, 1_000_000, then + 1_001_000), None);
        assert_eq!(remembered(value, tag ^ 1, 1_000_000, then + 10), None);
        assert_eq!(remembered(0, 0, u64::MAX, then), None);
    }

    #[test]
    fn groups_and_rules_spread_over_the_slots() {
        let mut used = std::collections::HashSet::new();
        for rule in 1..5 {
            for last in 0..10_000u32 {
                used.insert(slot(key(rule, last.to_be())).0);
            }
        }
        // 40,000 keys into 65,536 slots: about 30,500 distinct if the hash is uniform.
        assert!(used.len() > 29_000, "only {} distinct slots", used.len());
    }
}
