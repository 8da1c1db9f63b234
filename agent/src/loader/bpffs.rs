//! Making sure the pin directory is on a BPF filesystem, mounting one where that is ours
//! to do.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

/// Where bpffs is conventionally mounted.
const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` f_type of a BPF filesystem (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure `pin_dir` is on a BPF filesystem. If it is under /sys/fs/bpf and nothing is
/// mounted there yet, mounts bpffs there (a host whose init did not). A container has no
/// right to mount: there the node's /sys/fs/bpf must already be bpffs, and the error says so
/// instead of a pinning failure later.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    if on_bpffs(pin_dir) {
        return Ok(());
    }
    let mut why = String::new();
    if pin_dir.starts_with(BPFFS_ROOT) && !mounted_at(Path::new(BPFFS_ROOT))? {
        match mount_bpffs() {
            Ok(()) if on_bpffs(pin_dir) => return Ok(()),
            Ok(()) => {}
            Err(e) => why = format!(" (mounting it on {BPFFS_ROOT} failed: {e})"),
        }
    }
    bail!(
        "{} is not on a BPF filesystem{why}; mount one first: `mount -t bpf bpf {BPFFS_ROOT}` \
         (in Kubernetes, the node's {BPFFS_ROOT} must be bpffs)",
        pin_dir.display()
    )
}

/// True if the nearest existing ancestor of `path` (or `path`) is on bpffs.
fn on_bpffs(path: &Path) -> bool {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statfs struct to fill.
    let ok = unsafe { libc::statfs(name.as_ptr(), &mut stat) } == 0;
    ok && stat.f_type as i64 == BPF_FS_MAGIC
}

/// True if something is mounted at exactly `path`.
pub(super) fn mounted_at(path: &Path) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == path.to_str()))
}

/// mount(2) directly: the agent's container image has no `mount` binary.
fn mount_bpffs() -> std::io::Result<()> {
    let target = std::ffi::CString::new(BPFFS_ROOT).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_dir_off_bpffs_is_refused_with_what_to_do() {
        // Not created: the check looks at the nearest directory that exists.
        let pin_dir = std::env::temp_dir().join("portcullis-not-bpffs/pins");
        let error = ensure_bpffs(&pin_dir).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("is not on a BPF filesystem"), "{text}");
        assert!(text.contains("mount -t bpf bpf /sys/fs/bpf"), "{text}");
    }
}
