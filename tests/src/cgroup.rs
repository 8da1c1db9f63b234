//! A memory cgroup for one test, so that an agent started in it runs under a pod's kind of
//! memory limit: cgroup v2 where its memory controller is there, else v1. Removed on drop,
//! once the processes in it are gone.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// A new cgroup limited to `limit_bytes` of memory.
    pub fn new(limit_bytes: u64) -> Result<Self> {
        let name = format!(
            "pc-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v2 {
            (Path::new("/sys/fs/cgroup").join(name), "memory.max")
        } else {
            (
                Path::new("/sys/fs/cgroup/memory").join(name),
                "memory.limit_in_bytes",
            )
        };
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cgroup = Self { dir };
        std::fs::write(cgroup.dir.join(limit_file), limit_bytes.to_string())
            .with_context(|| format!("setting {limit_file}"))?;
        Ok(cgroup)
    }

    /// The file a process writes "0" to, to join the cgroup.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A process killed a moment ago may still be leaving.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
