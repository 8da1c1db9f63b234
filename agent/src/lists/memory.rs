//! How many entries one list may hold: no more than `capacity.cidrs` could ever take (both
//! families), and no more than the agent's memory limit leaves room for, given what is in
//! use when the list is read (the kernel maps are charged to the agent's cgroup too). A
//! feed that grows past either is refused as it is read, so it cannot take the agent's
//! memory, and the copy in force stays.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use super::format::EntryBound;

/// The agent's memory one list entry takes at the peak of reading, merging and applying
/// it (measured: BENCHMARKS.md, "List memory"), rounded up.
const BYTES_PER_ENTRY: u64 = 128;
/// The share of the memory the limit leaves free that one list's entries may take: the
/// rest is for the other lists and the agent's own growth.
const FREE_SHARE: u64 = 2;

/// The bound on one list's entries under `capacity_cidrs`, now.
pub fn entry_bound(capacity_cidrs: u32) -> EntryBound {
    bound(capacity_cidrs, cgroup().and_then(Cgroup::memory))
}

/// The agent's cgroup's memory: its limit, and what is in use (the agent's own, and the
/// kernel maps, which are charged to it too).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Memory {
    limit: u64,
    used: u64,
}

fn bound(capacity_cidrs: u32, memory: Option<Memory>) -> EntryBound {
    let by_capacity = 2 * capacity_cidrs as usize;
    let by_memory =
        memory.map(|m| (m.limit.saturating_sub(m.used) / FREE_SHARE / BYTES_PER_ENTRY) as usize);
    match (memory, by_memory) {
        (Some(memory), Some(max)) if max < by_capacity => EntryBound {
            max,
            why: format!(
                "what the agent's memory limit of {} MiB leaves room for, {} MiB in use",
                memory.limit >> 20,
                memory.used >> 20
            ),
        },
        _ => EntryBound {
            max: by_capacity,
            why: format!("capacity.cidrs is {capacity_cidrs} per family"),
        },
    }
}

/// The files of the agent's memory cgroup.
#[derive(Debug, Clone, PartialEq)]
struct Cgroup {
    limit: PathBuf,
    usage: PathBuf,
}

impl Cgroup {
    /// Its limit and usage now; `None` without a limit.
    fn memory(&self) -> Option<Memory> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        // "max" (v2), or a page-rounded i64::MAX (v1): no limit.
        let limit = read(&self.limit).filter(|&bytes| bytes < 1 << 60)?;
        Some(Memory {
            limit,
            used: read(&self.usage).unwrap_or(0),
        })
    }
}

/// The agent's memory cgroup (v2, or v1's memory controller), found once.
fn cgroup() -> Option<&'static Cgroup> {
    static CGROUP: OnceLock<Option<Cgroup>> = OnceLock::new();
    CGROUP
        .get_or_init(|| {
            let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            cgroup_of(&cgroups, Path::new("/sys/fs/cgroup"))
        })
        .as_ref()
}

/// The memory cgroup of those listed in `cgroups` (`/proc/self/cgroup`) under `root`.
fn cgroup_of(cgroups: &str, root: &Path) -> Option<Cgroup> {
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let cgroup = match controllers {
            "" => {
                let dir = root.join(path);
                Cgroup {
                    limit: dir.join("memory.max"),
                    usage: dir.join("memory.current"),
                }
            }
            c if c.split(',').any(|c| c == "memory") => {
                let dir = root.join("memory").join(path);
                Cgroup {
                    limit: dir.join("memory.limit_in_bytes"),
                    usage: dir.join("memory.usage_in_bytes"),
                }
            }
            _ => continue,
        };
        if cgroup.limit.exists() {
            return Some(cgroup);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_bounds_a_list_unless_memory_bounds_it_more() {
        let bound_by = |memory| bound(1_048_576, memory);
        assert_eq!(bound_by(None).max, 2_097_152);
        assert_eq!(bound_by(None).why, "capacity.cidrs is 1048576 per family");
        let roomy = Memory {
            limit: 1 << 40,
            used: 1 << 30,
        };
        assert_eq!(bound_by(Some(roomy)).max, 2_097_152);
        let pod = bound_by(Some(Memory {
            limit: 512 << 20,
            used: 256 << 20,
        }));
        assert_eq!(pod.max, 1_048_576);
        assert_eq!(
            pod.why,
            "what the agent's memory limit of 512 MiB leaves room for, 256 MiB in use"
        );
        let full = Memory {
            limit: 512 << 20,
            used: 600 << 20,
        };
        assert_eq!(bound_by(Some(full)).max, 0);
    }

    #[test]
    fn the_cgroup_is_found_for_v2_and_v1() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("kubepods/pod1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "536870912\n").unwrap();
        std::fs::write(v2.join("memory.current"), "104857600\n").unwrap();
        let found = cgroup_of("0::/kubepods/pod1\n", root.path()).unwrap();
        let memory = Memory {
            limit: 512 << 20,
            used: 100 << 20,
        };
        assert_eq!(found.memory(), Some(memory));
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        assert_eq!(found.memory(), None);

        let v1 = root.path().join("memory/docker/abc");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        let cgroups = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        let found = cgroup_of(cgroups, root.path()).unwrap();
        assert_eq!(found.memory(), None);
        std::fs::write(v1.join("memory.limit_in_bytes"), "134217728\n").unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "0\n").unwrap();
        assert_eq!(found.memory().map(|m| m.limit), Some(128 << 20));
    }
}
