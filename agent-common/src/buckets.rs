//! The layout of `BUCKETS`, the per-source token buckets: an array of sets of `WAYS` slots,
//! a source group's bucket in one of the slots of the set its hash picks. The kernel finds
//! a bucket with one array lookup and a few compares, where the kernel's LRU hash map took
//! four function calls (hash, bucket walk, `memcmp`, the lookup); a bucket there was most
//! of the cost of a rate-limited packet.
//!
//! A new bucket takes its set's empty slot, else the slot whose bucket is fullest (its
//! theoretical arrival time earliest): a full bucket is one a new source would get anyway,
//! so evicting it loses nothing but an escalation count, and a source still paying off
//! its excess is the last to go. Only a new source that outspends it can take its slot.

use crate::{Bucket, BucketKey};

/// Slots in a set: four slots of 64 bytes, four cache lines.
pub const WAYS: usize = 4;

/// One slot: a bucket and the group that owns it; all zeros while empty (rule id 0 is
/// never used).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSlot {
    pub key: BucketKey,
    /// Makes a slot one 64-byte cache line.
    pub _pad: [u32; 3],
    pub bucket: Bucket,
}

/// A value of `BUCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSet {
    pub slots: [BucketSlot; WAYS],
}

const _: () = assert!(size_of::<BucketSlot>() == 64);
const _: () = assert!(size_of::<BucketSet>() == 64 * WAYS);

/// Sets for `sources` buckets: a power of two, so that a hash picks one with a mask.
pub const fn sets(sources: u32) -> u32 {
    let sets = sources.div_ceil(WAYS as u32);
    if sets <= 1 {
        1
    } else {
        sets.next_power_of_two()
    }
}

/// Buckets there is room for at `sources`: whole sets of them.
pub const fn room(sources: u32) -> u32 {
    sets(sources) * WAYS as u32
}

/// The hash of a source group under a rule, which picks its set here and its slot in the
/// admission sketch (`admission`).
#[inline(always)]
pub fn group_hash(key: &BucketKey) -> u64 {
    let [a, b, c, d] = key.addr;
    let mut h = ((u64::from(a) << 32) | u64::from(b))
        ^ ((u64::from(c) << 32) | u64::from(d)).rotate_left(29)
        ^ u64::from(key.rule).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // MurmurHash3's 64-bit finalizer: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The set of the group hashed to `hash`, where `mask` is the set count less one
/// (`Settings::bucket_set_mask`). Bits the admission sketch's slot does not use.
#[inline(always)]
pub fn set_index(hash: u64, mask: u32) -> u32 {
    (hash >> 16) as u32 & mask
}

/// The slot a new bucket takes among `slots`: the one whose bucket is fullest (earliest
/// TAT; the first of equals). An empty slot is all zeros, so its TAT is the earliest.
#[inline(always)]
pub fn victim(slots: &[BucketSlot; WAYS]) -> usize {
    let mut chosen = 0;
    let mut earliest = slots[0].bucket.tat_ns;
    for (way, slot) in slots.iter().enumerate().skip(1) {
        if slot.bucket.tat_ns < earliest {
            earliest = slot.bucket.tat_ns;
            chosen = way;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(rule: u32, tat_ns: u64) -> BucketSlot {
        BucketSlot {
            key: BucketKey {
                rule,
                addr: [0, 0, 0, rule],
            },
            bucket: Bucket {
                tat_ns,
                ..Bucket::default()
            },
            ..BucketSlot::default()
        }
    }

    #[test]
    fn sets_are_a_power_of_two_with_room_for_every_source() {
        assert_eq!(sets(0), 1);
        assert_eq!(sets(1), 1);
        assert_eq!(sets(4), 1);
        assert_eq!(sets(5), 2);
        assert_eq!(sets(100_000), 32_768);
        assert_eq!(sets(1 << 20), 1 << 18);
        assert_eq!(room(100), 128, "100 sources: 32 sets of 4");
    }

    #[test]
    fn a_new_bucket_takes_an_empty_slot_else_the_fullest_bucket() {
        let mut slots = [slot(1, 50), slot(2, 10), slot(3, 70), slot(4, 30)];
        assert_eq!(victim(&slots), 1, "earliest TAT");
        slots[3] = BucketSlot::default();
        assert_eq!(victim(&slots), 3, "empty slot first");
        let equal = [slot(1, 5), slot(2, 5), slot(3, 5), slot(4, 5)];
        assert_eq!(victim(&equal), 0, "first of equals");
    }

    #[test]
    fn groups_and_rules_spread_over_the_sets() {
        let mask = sets(1 << 16) - 1;
        let mut load = vec![0u32; mask as usize + 1];
        for rule in 1..5 {
            for last in 0..16_384u32 {
                let key = BucketKey {
                    rule,
                    addr: [0, 0, 0xffff_0000u32.to_be(), last.to_be()],
                };
                load[set_index(group_hash(&key), mask) as usize] += 1;
            }
        }
        // 65,536 keys into 16,384 sets of 4: with a uniform hash about 46 sets get more
        // than 10 keys (Poisson, mean 4).
        let over = load.iter().filter(|&&n| n > 10).count();
        assert!(over < 150, "{over} sets hold more than 10 keys");
    }
}
