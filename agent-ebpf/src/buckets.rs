//! The kernel's side of `agent_common::buckets`: a source group's bucket in the set its hash
//! picks, and a slot for a new one.

use agent_common::{
    Bucket, BucketKey,
    buckets::{self, BucketSet, BucketSlot, WAYS},
    maps::{COUNTER_BUCKET_EVICTIONS, COUNTER_BUCKETS_CREATED},
};

use crate::{
    counters,
    maps::{BUCKETS, SETTINGS},
};

/// The set of the group hashed to `hash`; `None` only if the maps disagree with the
/// settings (which the agent writes from the same capacity).
#[inline(always)]
pub fn set_of(hash: u64) -> Option<*mut BucketSet> {
    let mask = SETTINGS
        .get(0)
        .map_or(0, |settings| settings.bucket_set_mask);
    BUCKETS.get_ptr_mut(buckets::set_index(hash, mask))
}

/// `key`'s bucket in `set`, if it has one.
///
/// # Safety
/// `set` comes from `set_of`.
#[inline(always)]
pub unsafe fn find(set: *mut BucketSet, key: &BucketKey) -> Option<*mut Bucket> {
    for way in 0..WAYS {
        // SAFETY: as the caller promises; `way` is within the set.
        unsafe {
            let slot = &raw mut (*set).slots[way];
            if same_group(&(*slot).key, key) {
                return Some(&raw mut (*set).slots[opaque(way, slot, key)].bucket);
            }
        }
    }
    None
}

/// `way`, in a form the verifier cannot tell from any other way: otherwise it follows the
/// rest of the rate limit once for each way a bucket can be found in (a quarter more
/// instructions verified for the whole program). `slot` is the matching slot of `way`: its
/// rule id, read again, equals `key`'s, unless another CPU has just given the slot to
/// another group, and then the bucket used is another slot's of the same set, as it
/// could have been a moment later anyway.
///
/// # Safety
/// `slot` points into a set from `set_of`.
#[inline(always)]
unsafe fn opaque(way: usize, slot: *mut BucketSlot, key: &BucketKey) -> usize {
    // SAFETY: as the caller promises.
    let rule = unsafe { core::ptr::read_volatile(&raw const (*slot).key.rule) };
    (way ^ (rule ^ key.rule) as usize) & (WAYS - 1)
}

/// True when `a` and `b` are one group under one rule: one branch, where comparing field
/// by field gives the verifier five paths for each slot of a set.
#[inline(always)]
fn same_group(a: &BucketKey, b: &BucketKey) -> bool {
    (a.rule ^ b.rule)
        | (a.addr[0] ^ b.addr[0])
        | (a.addr[1] ^ b.addr[1])
        | (a.addr[2] ^ b.addr[2])
        | (a.addr[3] ^ b.addr[3])
        == 0
}

/// Gives `key` the slot of `set` that `buckets::victim` picks, holding `bucket`, and counts
/// the bucket created, and the one it replaced if the slot held one (rule id 0: empty).
///
/// Another CPU may pick the same slot at the same time, or still be judging a packet of
/// the group it replaces: the bucket is written before the key, so a packet that finds
/// the new key finds its bucket, and the worst a race leaves is one group with the other's
/// fresh bucket, or a slot whose key is no group's (which the next new bucket takes).
///
/// # Safety
/// `set` comes from `set_of`.
#[inline(always)]
pub unsafe fn insert(set: *mut BucketSet, key: BucketKey, bucket: Bucket) {
    // SAFETY: as the caller promises.
    unsafe {
        let way = buckets::victim(&(*set).slots);
        let slot = &raw mut (*set).slots[way & (WAYS - 1)];
        if core::ptr::read_volatile(&raw const (*slot).key.rule) != 0 {
            counters::bump(COUNTER_BUCKET_EVICTIONS);
        }
        core::ptr::write_volatile(&raw mut (*slot).bucket, bucket);
        core::ptr::write_volatile(&raw mut (*slot).key, key);
    }
    counters::bump(COUNTER_BUCKETS_CREATED);
}
