//! The marks the agent keeps on source tries it found empty (`agent_common::maps::EMPTY_TRIES`):
//! a lookup in a marked pair is skipped.

use agent_common::maps::MARKED_EMPTY;

use crate::maps::EMPTY_TRIES;

/// True while the agent has the tries of `entry` marked empty.
#[inline(always)]
pub fn marked(entry: u32) -> bool {
    EMPTY_TRIES
        .get(entry)
        .is_some_and(|mark| *mark == MARKED_EMPTY)
}

/// Clears the mark of `entry`, after an insert into its tries. The mark is read first: a
/// store would take the line from every other CPU even when the mark is already clear.
#[inline(always)]
pub fn clear(entry: u32) {
    if let Some(mark) = EMPTY_TRIES.get_ptr_mut(entry) {
        // SAFETY: a pointer from a successful lookup; an aligned 4-byte access is never torn.
        unsafe {
            if core::ptr::read_volatile(mark) != 0 {
                core::ptr::write_volatile(mark, 0);
            }
        }
    }
}
