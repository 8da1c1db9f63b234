//! The one atomic operation the bucket update needs. The BPF target's `core::sync::atomic`
//! offers no compare-and-exchange (rustc disables CAS for BPF as a whole because LLVM cannot
//! lower every read-modify-write), but LLVM lowers this one to the kernel's BPF_CMPXCHG
//! even for the `generic` CPU the object is built for (which lacks the fetching adds), so it
//! is used through the intrinsic.

use core::intrinsics::{self, AtomicOrdering::Relaxed};

/// Writes `new` at `ptr` if it still holds `old`; `Err` carries what it held instead.
///
/// # Safety
/// `ptr` must be valid and aligned for a `u64` (a map value from a successful lookup).
#[inline(always)]
pub unsafe fn compare_exchange(ptr: *mut u64, old: u64, new: u64) -> Result<u64, u64> {
    // SAFETY: as the caller promises.
    match unsafe { intrinsics::atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(ptr, old, new) } {
        (_, true) => Ok(old),
        (current, false) => Err(current),
    }
}
