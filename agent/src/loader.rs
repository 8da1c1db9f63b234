//! Loading the embedded eBPF object with maps sized from the policy, pinning its maps, and
//! attaching it to interfaces with pinned links.

use std::{
    fs,
    path::{Path, PathBuf},
};

use agent_common::maps as names;
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};

use crate::policy::Capacity;

/// The kernel programs, built by `build.rs` from `agent-ebpf` in release mode.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));

pub const XDP_PROGRAM: &str = "portcullis_xdp";
pub const TC_PROGRAM: &str = "portcullis_tc";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis";

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

/// Loads the object with the policy-dependent maps sized from `capacity`.
pub fn load(capacity: &Capacity) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for name in [
        names::ALLOW_V4,
        names::ALLOW_V6,
        names::DENY_V4,
        names::DENY_V6,
    ]
    .concat()
    {
        loader.map_max_entries(name, capacity.cidrs);
    }
    for name in [names::BANS_V4, names::BANS_V6] {
        loader.map_max_entries(name, capacity.bans);
    }
    loader.map_max_entries(names::BUCKETS, capacity.sources);
    loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (is this root, with BPF enabled in the kernel?)")
}

/// Mounts bpffs on /sys/fs/bpf if nothing is mounted there yet.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .context("running mount -t bpf")?;
    if !status.success() {
        bail!("mounting bpffs on /sys/fs/bpf failed: {status}");
    }
    Ok(())
}

/// Pin layout under the pin directory.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Pins every map under `<pin_dir>/maps`, so `portcullis stats` and later tools can read
/// them while the agent runs.
pub fn pin_maps(ebpf: &Ebpf, pin_dir: &Path) -> Result<()> {
    let dir = maps_dir(pin_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, map) in ebpf.maps() {
        map.pin(dir.join(name))
            .with_context(|| format!("pinning map {name} in {}", dir.display()))?;
    }
    Ok(())
}

/// One program attached to one interface through a pinned link.
pub struct Attachment {
    pub iface: String,
    /// "xdp-native", "xdp-skb" or "tc".
    pub hook: &'static str,
    pub program_id: u32,
    /// Where the link is pinned; reading it back tells what is attached.
    pub pin_path: PathBuf,
    link: PinnedLink,
}

impl Attachment {
    /// Unpins and closes the link, which detaches the program from the interface.
    pub fn detach(self) -> Result<()> {
        let link = self
            .link
            .unpin()
            .with_context(|| format!("unpinning the link on {}", self.iface))?;
        drop(link);
        Ok(())
    }
}

pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: Hook,
    xdp_mode: XdpModeOption,
    pin_dir: &Path,
) -> Result<Attachment> {
    let dir = links_dir(pin_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if hook == Hook::Xdp {
        match attach_xdp(ebpf, iface, xdp_mode, &dir) {
            Ok(attachment) => return Ok(attachment),
            Err(e) => tracing::warn!(
                iface,
                error = format!("{e:#}"),
                "XDP cannot attach; falling back to TC ingress"
            ),
        }
    }
    attach_tc(ebpf, iface, &dir)
}

fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: XdpModeOption, dir: &Path) -> Result<Attachment> {
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the object"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().context("loading the XDP program")?;
    }
    let program_id = program.info()?.id();
    let modes: &[(XdpMode, &'static str)] = match mode {
        XdpModeOption::Auto => &[(XdpMode::Driver, "xdp-native"), (XdpMode::Skb, "xdp-skb")],
        XdpModeOption::Native => &[(XdpMode::Driver, "xdp-native")],
        XdpModeOption::Skb => &[(XdpMode::Skb, "xdp-skb")],
    };
    let mut last_error = None;
    for &(xdp_mode, hook) in modes {
        match program.attach(iface, xdp_mode) {
            Ok(id) => {
                let link = FdLink::try_from(program.take_link(id)?)
                    .context("XDP attached without a bpf_link (kernel older than 5.9?)")?;
                let path = dir.join(format!("xdp-{iface}"));
                let link = link
                    .pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
                return Ok(Attachment {
                    iface: iface.to_string(),
                    hook,
                    program_id,
                    pin_path: path,
                    link,
                });
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(anyhow!(last_error.expect("at least one mode tried")))
        .with_context(|| format!("attaching XDP to {iface}"))
}

fn attach_tc(ebpf: &mut Ebpf, iface: &str, dir: &Path) -> Result<Attachment> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .ok_or_else(|| anyhow!("program {TC_PROGRAM} missing from the object"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().context("loading the TC program")?;
    }
    let program_id = program.info()?.id();
    let id = program
        .attach(iface, TcAttachType::Ingress)
        .with_context(|| format!("attaching TC ingress to {iface}"))?;
    let link = FdLink::try_from(program.take_link(id)?)
        .context("TC attached through netlink, which cannot be pinned (kernel older than 6.6?)")?;
    let path = dir.join(format!("tc-{iface}"));
    let link = link
        .pin(&path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(Attachment {
        iface: iface.to_string(),
        hook: "tc",
        program_id,
        pin_path: path,
        link,
    })
}

/// Removes everything under a pin directory: pinned links (which detaches their programs)
/// and pinned maps. Only the agent's own directory is touched.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    fs::remove_dir_all(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))
}

/// True if the pin directory holds pins from another agent or an unclean exit.
pub fn pins_present(pin_dir: &Path) -> bool {
    fs::read_dir(pin_dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// The id of the program attached through the link pinned at `path`.
pub fn attached_program(path: &Path) -> Result<u32> {
    let link: FdLink = PinnedLink::from_pin(path)
        .with_context(|| format!("opening the link pinned at {}", path.display()))?
        .into();
    Ok(link.info().context("reading the link's info")?.program_id())
}
