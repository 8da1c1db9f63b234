//! The kernel's side of `agent_common::admission`: remembering the first packet of a source
//! group that has no bucket, and finding it again at its second.

use agent_common::admission;

use crate::maps::ADMISSION;

/// When the group hashed to `hash` (`buckets::group_hash`) sent its previous bucketless
/// packet, if that is remembered and less than `window_ns` ago; the slot is then cleared for
/// the bucket to take over. Otherwise this packet is remembered (over whichever group held
/// the slot) and the answer is `None`.
#[inline(always)]
pub fn previous_packet(hash: u64, window_ns: u64, now: u64) -> Option<u64> {
    let (index, tag) = admission::slot(hash);
    let slot = ADMISSION.get_ptr_mut(index)?;
    // SAFETY: a pointer from a successful lookup. Other CPUs may write the slot at the same
    // time; an aligned 8-byte access is never torn, and a lost write only costs a group
    // one more bucketless packet.
    unsafe {
        let seen = core::ptr::read_volatile(slot);
        let previous = admission::remembered(seen, tag, window_ns, now);
        core::ptr::write_volatile(
            slot,
            if previous.is_some() {
                0
            } else {
                admission::entry(tag, now)
            },
        );
        previous
    }
}
