//! The pin directory: where maps and links are pinned, the lock that keeps two agents from
//! sharing it, and its removal.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis";

/// Where maps are pinned under the pin directory.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

/// Where links are pinned under the pin directory, one per interface.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Holds an exclusive lock on the pin directory for the agent's lifetime, so two agents
/// never share (and fight over) one set of pins. The lock goes with the file descriptor.
pub struct PinDirLock {
    _dir: std::fs::File,
}

impl PinDirLock {
    pub fn take(pin_dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let dir = std::fs::File::open(pin_dir)
            .with_context(|| format!("opening {}", pin_dir.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked != 0 {
            bail!(
                "another agent is running with the pins in {}; stop it first (or use another --pin-dir)",
                pin_dir.display()
            );
        }
        Ok(Self { _dir: dir })
    }
}

/// Removes everything under a pin directory: pinned links (which detaches their programs)
/// and pinned maps, then the directory itself unless it is a mount point (a container
/// given only this directory of the node's bpffs). Only the agent's own directory is
/// touched.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    if !super::bpffs::mounted_at(pin_dir)? {
        return fs::remove_dir_all(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()));
    }
    for entry in fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))? {
        let path = entry?.path();
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// True if a previous agent left maps pinned under `pin_dir`.
pub fn maps_pinned(pin_dir: &Path) -> bool {
    fs::read_dir(maps_dir(pin_dir)).is_ok_and(|mut entries| entries.next().is_some())
}
