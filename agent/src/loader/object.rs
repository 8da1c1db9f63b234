//! The embedded eBPF object, loaded with its maps sized from the table in
//! `agent_common::maps` and, for the agent, pinned (reusing maps a previous agent pinned).

use std::{fs, path::Path};

use agent_common::{
    Capacity,
    maps::{self, Contents},
};
use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader, maps::MapData};

/// The kernel programs, built by `build.rs` from `agent-ebpf` in release mode.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));

/// The XDP entry point.
pub const XDP_PROGRAM: &str = "portcullis_xdp";
/// The TC ingress entry point.
pub const TC_PROGRAM: &str = "portcullis_tc";
/// The TC egress entry point: HTTP responses, for response rules.
pub const TC_EGRESS_PROGRAM: &str = "portcullis_tc_egress";

/// Checks the maps pinned in `maps_dir` against the ones this agent would create, so they
/// can be taken over. A map not pinned there is one this version added: the loader creates
/// it. A pinned map of another layout (another version, or a changed `capacity`) holding
/// state (blocks, bans) refuses the start, with how to start afresh; the others
/// are listed for `unpin_replaced`: counters and buffers alone, the policy maps all
/// together (see `maps::Contents`).
pub fn check_pinned_maps(maps_dir: &Path, capacity: &Capacity) -> Result<Vec<&'static str>> {
    let mut replaced = Vec::new();
    for spec in maps::ALL {
        let path = maps_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("{} is missing or unreadable", path.display()))?;
        let pinned = Layout {
            kind: info.map_type().map_or(0, |kind| kind as u32),
            flags: info.map_flags(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            entries: info.max_entries(),
        };
        let wanted = Layout {
            kind: spec.kind as u32,
            flags: spec.flags,
            key_size: spec.key_size,
            value_size: spec.value_size,
            entries: spec.max_entries(capacity),
        };
        if pinned == wanted {
            continue;
        }
        if spec.contents == Contents::State {
            bail!(
                "pinned map {} is {pinned:?}, this agent needs {wanted:?} (another version, \
                 or a changed `capacity`); run `portcullis detach` to start afresh",
                spec.name
            );
        }
        replaced.push(spec.name);
    }
    // The programs running now keep their own policy maps until ours replace them, so a
    // new policy set needs a new GENERATION too: flipping the shared one would send them
    // to a set of theirs that holds an older policy.
    if maps::ALL
        .iter()
        .any(|spec| spec.contents == Contents::Policy && replaced.contains(&spec.name))
    {
        for spec in maps::ALL.iter().filter(|s| s.contents == Contents::Policy) {
            if !replaced.contains(&spec.name) && maps_dir.join(spec.name).exists() {
                replaced.push(spec.name);
            }
        }
    }
    Ok(replaced)
}

/// What must match for a pinned map to be taken over.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    /// `BPF_MAP_TYPE_*`.
    kind: u32,
    flags: u32,
    key_size: u32,
    value_size: u32,
    entries: u32,
}

/// Removes the pins of `names` in `maps_dir`, so the loader creates those maps afresh; the
/// programs attached now keep theirs until they are replaced.
pub fn unpin_replaced(maps_dir: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let path = maps_dir.join(name);
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// A loader with every map the policy sizes set to its size under `capacity`.
fn sized_loader(capacity: &Capacity) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for spec in maps::ALL.iter().filter(|spec| spec.sized_by_policy()) {
        loader.map_max_entries(spec.name, spec.max_entries(capacity));
    }
    loader
}

/// Loads the object with every map pinned in `maps_dir`: maps already pinned there are
/// reused (with their contents), the others are created and pinned.
pub fn load(capacity: &Capacity, maps_dir: &Path) -> Result<Ebpf> {
    fs::create_dir_all(maps_dir).with_context(|| format!("creating {}", maps_dir.display()))?;
    let mut loader = sized_loader(capacity);
    for spec in maps::ALL {
        loader.map_pin_path(spec.name, maps_dir.join(spec.name));
    }
    loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (is this root, with BPF enabled in the kernel?)")
}

/// Loads the object without pinning anything (tests).
pub fn load_unpinned(capacity: &Capacity) -> Result<Ebpf> {
    sized_loader(capacity)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (is this root, with BPF enabled in the kernel?)")
}
