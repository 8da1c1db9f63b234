//! `run --bpf-stats`: asks the kernel to time BPF programs (`BPF_ENABLE_STATS`) for as long
//! as the agent holds the returned descriptor, so the metrics can report the programs' own
//! run time without anyone writing the `kernel.bpf_stats_enabled` sysctl. While enabled,
//! every BPF program on the machine is timed, at a small cost per run.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

// include/uapi/linux/bpf.h
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Stats stay on until the descriptor is closed.
pub fn enable() -> io::Result<OwnedFd> {
    // `union bpf_attr` for BPF_ENABLE_STATS: just the stats type.
    let mut attr = BPF_STATS_RUN_TIME;
    // SAFETY: the attribute is the 4-byte prefix of `union bpf_attr` this command reads.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &mut attr as *mut u32,
            4usize,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
