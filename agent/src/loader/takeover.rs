//! Taking over what a previous agent left attached: the new program replaces the old one
//! inside its pinned link in one step (`bpf_link_update`), so the interface is never
//! without a program; links this agent was not asked to keep are detached.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};

use super::{
    attach::{Attachment, tc_program, xdp_program},
    object::{TC_EGRESS_PROGRAM, TC_PROGRAM},
    pin_dir::links_dir,
};

/// Replaces the program inside the link a previous agent pinned at `path` for `iface`.
pub(super) fn replace_in_link(
    ebpf: &mut Ebpf,
    iface: &str,
    kind: &str,
    path: PathBuf,
) -> Result<Attachment> {
    let old: FdLink = PinnedLink::from_pin(&path)
        .with_context(|| format!("opening the link pinned at {}", path.display()))?
        .into();
    let (hook, program_id, link) = if kind == "xdp" {
        let program = xdp_program(ebpf)?;
        let id = program
            .attach_to_link(XdpLink::try_from(old)?)
            .with_context(|| format!("replacing the program in the XDP link on {iface}"))?;
        let program_id = program.info()?.id();
        ("xdp", program_id, FdLink::try_from(program.take_link(id)?)?)
    } else {
        let (name, hook) = if kind == "egress" {
            (TC_EGRESS_PROGRAM, "tc-egress")
        } else {
            (TC_PROGRAM, "tc")
        };
        let program = tc_program(ebpf, name)?;
        let id = program
            .attach_to_link(SchedClassifierLink::try_from(old)?)
            .with_context(|| format!("replacing the program in the {hook} link on {iface}"))?;
        let program_id = program.info()?.id();
        (hook, program_id, FdLink::try_from(program.take_link(id)?)?)
    };
    Ok(Attachment {
        iface: iface.to_string(),
        hook,
        adopted: true,
        program_id,
        pin_path: path,
        link,
    })
}

/// Detaches links pinned under `pin_dir` for interfaces not in `keep`: a previous agent
/// protected them, this one was not asked to. Returns the interfaces detached.
pub fn detach_others(pin_dir: &Path, keep: &[Attachment]) -> Result<Vec<String>> {
    let mut detached = Vec::new();
    let Ok(entries) = fs::read_dir(links_dir(pin_dir)) else {
        return Ok(detached);
    };
    for entry in entries {
        let path = entry?.path();
        if keep.iter().any(|a| a.pin_path == path) {
            continue;
        }
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        detached.push(
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok(detached)
}

/// The id of the program attached through the link pinned at `path`.
pub fn attached_program(path: &Path) -> Result<u32> {
    let link: FdLink = PinnedLink::from_pin(path)
        .with_context(|| format!("opening the link pinned at {}", path.display()))?
        .into();
    Ok(link.info().context("reading the link's info")?.program_id())
}
