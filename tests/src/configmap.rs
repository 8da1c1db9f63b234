//! A ConfigMap volume as the kubelet writes it (its "atomic writer"): each version of the
//! data lives in a hidden timestamped directory, `..data` is a symlink to the current one,
//! and every key is a symlink `key -> ..data/key`. An update writes a new directory, points
//! a temporary symlink at it and renames that over `..data`, then removes the old
//! directory: the key's own symlink never changes, its target does.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct ConfigMapVolume {
    dir: PathBuf,
    current: Option<PathBuf>,
}

impl ConfigMapVolume {
    /// Mounts (creates) the volume in `dir` with `files` (key, content).
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> Result<Self> {
        let mut volume = Self {
            dir: dir.to_path_buf(),
            current: None,
        };
        volume.update(files)?;
        for (key, _) in files {
            symlink(Path::new("..data").join(key), dir.join(key))
                .with_context(|| format!("linking {key}"))?;
        }
        Ok(volume)
    }

    /// The volume's directory, which a pod mounts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path a pod reads a key at.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Replaces the data the way the kubelet does when the ConfigMap changes.
    pub fn update(&mut self, files: &[(&str, &str)]) -> Result<()> {
        let name = format!(
            "..{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let version = self.dir.join(&name);
        std::fs::create_dir(&version).with_context(|| format!("creating {name}"))?;
        for (key, content) in files {
            std::fs::write(version.join(key), content)?;
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).context("linking ..data_tmp")?;
        std::fs::rename(&tmp, self.dir.join("..data")).context("renaming ..data_tmp")?;
        if let Some(old) = self.current.replace(version) {
            std::fs::remove_dir_all(old)?;
        }
        Ok(())
    }
}
