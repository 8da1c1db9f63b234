//! Attaching the programs to interfaces through pinned links: XDP (native or generic) with
//! a fall back to TC ingress, never silently replacing another tool's XDP program; and TC
//! egress, where the server's responses are counted.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};

use super::{
    foreign,
    object::{TC_EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM},
    pin_dir::links_dir,
    takeover::replace_in_link,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hook {
    /// XDP, falling back to TC ingress on an interface where XDP cannot attach.
    Xdp,
    /// TC ingress (tcx).
    Tc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeOption {
    /// Native (driver) mode if the driver supports it, generic (skb) mode otherwise.
    Auto,
    /// Native mode only.
    Native,
    /// Generic mode only.
    Skb,
}

/// One program attached to one interface through a pinned link.
pub struct Attachment {
    pub iface: String,
    /// "xdp-native", "xdp-skb", "tc" or "tc-egress" for a new link; "xdp", "tc" or
    /// "tc-egress" for a link taken over from a previous agent.
    pub hook: &'static str,
    /// True if the link was a previous agent's and only the program in it was replaced.
    pub adopted: bool,
    pub program_id: u32,
    /// Where the link is pinned; reading it back tells what is attached.
    pub pin_path: PathBuf,
    pub(super) link: FdLink,
}

impl Attachment {
    /// Removes the pin and closes the link, which detaches the program.
    pub fn detach(self) -> Result<()> {
        fs::remove_file(&self.pin_path)
            .with_context(|| format!("unpinning the link on {}", self.iface))?;
        drop(self.link);
        Ok(())
    }

    /// Closes our handle but leaves the link pinned: the program keeps enforcing until the
    /// next agent takes it over or `portcullis detach` removes it.
    pub fn keep(self) {
        drop(self.link);
    }
}

pub(super) fn pin_path(dir: &Path, kind: &str, iface: &str) -> PathBuf {
    dir.join(format!("{kind}-{iface}"))
}

/// Attaches to `iface`. A link a previous agent pinned for it is taken over: the new
/// program replaces the old one inside it in one step (`bpf_link_update`), so the
/// interface is never without a program.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: Hook,
    xdp_mode: XdpModeOption,
    replace_foreign: bool,
    pin_dir: &Path,
) -> Result<Attachment> {
    let dir = links_dir(pin_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for kind in ["xdp", "tc"] {
        let path = pin_path(&dir, kind, iface);
        if path.exists() {
            return replace_in_link(ebpf, iface, kind, path);
        }
    }
    if hook == Hook::Xdp {
        let mut result = attach_xdp(ebpf, iface, xdp_mode, &dir);
        if replace_foreign && matches!(result, Err(AttachError::Foreign(_))) {
            let held_by_link = || {
                anyhow!(
                    "{iface}: the XDP program there is held by another process's bpf link, which \
                     --replace-foreign-xdp does not sever; stop its owner first, or run with --hook tc"
                )
            };
            match foreign::remove_xdp(ifindex(iface)?) {
                Ok(()) => {}
                // The kernel will not remove a link's program through netlink.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(held_by_link()),
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("removing the foreign XDP program on {iface}")));
                }
            }
            result = attach_xdp(ebpf, iface, xdp_mode, &dir);
            match &result {
                Ok(_) => tracing::warn!(
                    iface,
                    "replaced a foreign XDP program (--replace-foreign-xdp)"
                ),
                Err(AttachError::Foreign(_)) => return Err(held_by_link()),
                Err(AttachError::Other(_)) => {}
            }
        }
        match result {
            Ok(attachment) => return Ok(attachment),
            Err(AttachError::Foreign(e)) => return Err(e),
            Err(AttachError::Other(e)) => tracing::warn!(
                iface,
                error = format!("{e:#}"),
                "XDP cannot attach; falling back to TC ingress"
            ),
        }
    }
    attach_tc(ebpf, iface, &dir)
}

pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the object"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().context("loading the XDP program")?;
    }
    Ok(program)
}

/// The TC program `name` (`TC_PROGRAM` or `TC_EGRESS_PROGRAM`), loaded.
pub(super) fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()?;
    if program.fd().is_err() {
        program
            .load()
            .with_context(|| format!("loading the TC program {name}"))?;
    }
    Ok(program)
}

enum AttachError {
    /// Another XDP program, not ours, holds the interface: never replaced silently.
    Foreign(anyhow::Error),
    Other(anyhow::Error),
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpModeOption,
    dir: &Path,
) -> Result<Attachment, AttachError> {
    let program = xdp_program(ebpf).map_err(AttachError::Other)?;
    let program_id = program
        .info()
        .map_err(|e| AttachError::Other(e.into()))?
        .id();
    let modes: &[(XdpMode, &'static str)] = match mode {
        XdpModeOption::Auto => &[(XdpMode::Driver, "xdp-native"), (XdpMode::Skb, "xdp-skb")],
        XdpModeOption::Native => &[(XdpMode::Driver, "xdp-native")],
        XdpModeOption::Skb => &[(XdpMode::Skb, "xdp-skb")],
    };
    let mut last_error = None;
    for &(xdp_mode, hook) in modes {
        match program.attach(iface, xdp_mode) {
            Ok(id) => {
                let pinned = (|| -> Result<Attachment> {
                    let link = FdLink::try_from(program.take_link(id)?)
                        .context("XDP attached without a bpf_link (kernel older than 5.9?)")?;
                    let path = pin_path(dir, "xdp", iface);
                    let link = link
                        .pin(&path)
                        .with_context(|| format!("pinning {}", path.display()))?;
                    Ok(Attachment {
                        iface: iface.to_string(),
                        hook,
                        adopted: false,
                        program_id,
                        pin_path: path,
                        link: link.into(),
                    })
                })();
                return pinned.map_err(AttachError::Other);
            }
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EBUSY) =>
            {
                return Err(AttachError::Foreign(anyhow!(
                    "{iface} already has an XDP program that this agent does not own (no link of \
                     ours is pinned for it); refusing to replace it. Remove it first, run with \
                     --replace-foreign-xdp to have it removed, or run with --hook tc"
                )));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(AttachError::Other(
        anyhow!(last_error.expect("at least one mode tried"))
            .context(format!("attaching XDP to {iface}")),
    ))
}

/// Attaches the egress program to `iface`, or takes over the egress link a previous agent
/// pinned for it.
pub fn attach_egress(ebpf: &mut Ebpf, iface: &str, pin_dir: &Path) -> Result<Attachment> {
    let dir = links_dir(pin_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = pin_path(&dir, "egress", iface);
    if path.exists() {
        return replace_in_link(ebpf, iface, "egress", path);
    }
    attach_tc_link(ebpf, iface, TcAttachType::Egress, &dir)
}

fn attach_tc(ebpf: &mut Ebpf, iface: &str, dir: &Path) -> Result<Attachment> {
    attach_tc_link(ebpf, iface, TcAttachType::Ingress, dir)
}

fn attach_tc_link(
    ebpf: &mut Ebpf,
    iface: &str,
    direction: TcAttachType,
    dir: &Path,
) -> Result<Attachment> {
    // The pin's name is the kind and the interface; "egress" is no interface name's
    // prefix that "tc-" pins could collide with.
    let (name, hook, kind) = match direction {
        TcAttachType::Egress => (TC_EGRESS_PROGRAM, "tc-egress", "egress"),
        _ => (TC_PROGRAM, "tc", "tc"),
    };
    let program = tc_program(ebpf, name)?;
    let program_id = program.info()?.id();
    let id = program
        .attach(iface, direction)
        .with_context(|| format!("attaching {hook} to {iface}"))?;
    let link = FdLink::try_from(program.take_link(id)?)
        .context("TC attached through netlink, which cannot be pinned (kernel older than 6.6?)")?;
    let path = pin_path(dir, kind, iface);
    let link = link
        .pin(&path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(Attachment {
        iface: iface.to_string(),
        hook,
        adopted: false,
        program_id,
        pin_path: path,
        link: link.into(),
    })
}

/// The index of interface `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).context("interface name contains NUL")?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface named {iface} in this network namespace");
    }
    Ok(index)
}
