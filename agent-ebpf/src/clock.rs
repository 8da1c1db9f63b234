//! The two clocks, both CLOCK_MONOTONIC. The precise one costs tens of nanoseconds per read
//! (a TSC read, more in a VM); the coarse one reads the time of the last tick. Only the
//! buckets of rules whose burst is tight beside a tick need the precise clock (the agent
//! says which, `RuleConfig::clock`), and only while they are near having room; the deny
//! path never reads it.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

#[inline(always)]
pub fn precise_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: as above.
    unsafe { bpf_ktime_get_coarse_ns() }
}
