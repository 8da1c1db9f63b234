//! Loading the embedded eBPF object with its maps pinned (reusing maps a previous agent
//! pinned), and attaching it to interfaces through pinned links: a fresh link, or the
//! program replaced atomically inside a link a previous agent left.

use std::{
    fs,
    mem::size_of,
    path::{Path, PathBuf},
};

use agent_common::{
    AclEntry, BanEntry, Bucket, BucketKey, CLASS_COUNT, EVENTS_BYTES, EventBudget, IfaceCounters,
    MAX_PORT_ENTRIES, MAX_RULES, PortRules, RuleConfig, RuleCounters, Settings, maps as names,
};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};

use crate::policy::Capacity;

/// The kernel programs, built by `build.rs` from `agent-ebpf` in release mode.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));

pub const XDP_PROGRAM: &str = "portcullis_xdp";
pub const TC_PROGRAM: &str = "portcullis_tc";
/// An XDP program that only passes: the benchmarks' floor, never attached.
pub const FLOOR_PROGRAM: &str = "portcullis_floor";
/// The benchmarks' flood generators (run with BPF_F_TEST_XDP_LIVE_FRAMES), never attached:
/// one sends its frame as given, the other with a random source in the frame's /12.
/// Reads a frame's source and drops it: the flood benchmark's ceiling, attached by the
/// benchmark only.
pub const DROP_ALL_PROGRAM: &str = "portcullis_drop_all";
pub const FLOOD_PROGRAM: &str = "portcullis_flood";
pub const FLOOD_SPOOFED_PROGRAM: &str = "portcullis_flood_spoofed";
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

/// Every map of the object with the key size, value size and capacity this agent gives it.
/// Pinned maps are reused only if they match, since the programs read them with these
/// layouts.
fn layout(capacity: &Capacity) -> Vec<(&'static str, usize, usize, u32)> {
    const LPM4: usize = 4 + 4;
    const LPM6: usize = 4 + 16;
    let acl_entries = capacity.cidrs.saturating_mul(2);
    let mut maps = Vec::new();
    for set in 0..2 {
        maps.extend([
            // Each list may hold `cidrs` entries per family, and they share the trie.
            (names::ACL_V4[set], LPM4, size_of::<AclEntry>(), acl_entries),
            (names::ACL_V6[set], LPM6, size_of::<AclEntry>(), acl_entries),
            (
                names::PORT_RULES[set],
                4,
                size_of::<PortRules>(),
                MAX_PORT_ENTRIES,
            ),
            (
                names::CLASS_RULES[set],
                4,
                size_of::<PortRules>(),
                CLASS_COUNT,
            ),
            (names::RULES[set], 4, size_of::<RuleConfig>(), MAX_RULES),
        ]);
    }
    maps.extend([
        (names::GENERATION, 4, 4, 1),
        (names::BANS_V4, LPM4, size_of::<BanEntry>(), capacity.bans),
        (names::BANS_V6, LPM6, size_of::<BanEntry>(), capacity.bans),
        (
            names::BUCKETS,
            size_of::<BucketKey>(),
            size_of::<Bucket>(),
            capacity.sources,
        ),
        (names::COUNTERS, 4, 8, names::COUNTER_SLOTS),
        (
            names::RULE_COUNTERS,
            4,
            size_of::<RuleCounters>(),
            MAX_RULES,
        ),
        (
            names::IFACE_COUNTERS,
            4,
            size_of::<IfaceCounters>(),
            names::IFACE_SLOTS,
        ),
        (names::SETTINGS, 4, size_of::<Settings>(), 1),
        (names::EVENT_BUDGET, 4, size_of::<EventBudget>(), 1),
        (names::EVENTS, 0, 0, EVENTS_BYTES),
    ]);
    maps
}

/// Checks that the maps pinned in `maps_dir` are the ones this agent would create, so they
/// can be taken over. The error says what differs and how to start afresh.
pub fn check_pinned_maps(maps_dir: &Path, capacity: &Capacity) -> Result<()> {
    for (name, key, value, max_entries) in layout(capacity) {
        let path = maps_dir.join(name);
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("{} is missing or unreadable", path.display()))?;
        let pinned = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if pinned != (key, value, max_entries) {
            bail!(
                "pinned map {name} has key/value sizes and capacity {pinned:?}, this agent needs {:?} \
                 (another version, or a changed `capacity`); run `portcullis detach` to start afresh",
                (key, value, max_entries)
            );
        }
    }
    Ok(())
}

/// Loads the object with every map pinned in `maps_dir`: maps already pinned there are
/// reused (with their contents), the others are created and pinned.
pub fn load(capacity: &Capacity, maps_dir: &Path) -> Result<Ebpf> {
    fs::create_dir_all(maps_dir).with_context(|| format!("creating {}", maps_dir.display()))?;
    let layout = layout(capacity);
    let mut loader = EbpfLoader::new();
    for &(name, _, _, max_entries) in &layout {
        loader.map_pin_path(name, maps_dir.join(name));
        if name != names::EVENTS {
            loader.map_max_entries(name, max_entries);
        }
    }
    loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (is this root, with BPF enabled in the kernel?)")
}

/// Loads the object without pinning anything (tests).
pub fn load_unpinned(capacity: &Capacity) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (name, _, _, max_entries) in layout(capacity) {
        if name != names::EVENTS {
            loader.map_max_entries(name, max_entries);
        }
    }
    loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (is this root, with BPF enabled in the kernel?)")
}

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

fn mounted_at(path: &Path) -> Result<bool> {
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

/// Pin layout under the pin directory.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// One program attached to one interface through a pinned link.
pub struct Attachment {
    pub iface: String,
    /// "xdp-native", "xdp-skb" or "tc" for a new link; "xdp" or "tc" for a link taken over
    /// from a previous agent.
    pub hook: &'static str,
    /// True if the link was a previous agent's and only the program in it was replaced.
    pub adopted: bool,
    pub program_id: u32,
    /// Where the link is pinned; reading it back tells what is attached.
    pub pin_path: PathBuf,
    link: FdLink,
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

fn pin_path(dir: &Path, kind: &str, iface: &str) -> PathBuf {
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
            match crate::foreign::remove_xdp(ifindex(iface)?) {
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

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the object"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().context("loading the XDP program")?;
    }
    Ok(program)
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .ok_or_else(|| anyhow!("program {TC_PROGRAM} missing from the object"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().context("loading the TC program")?;
    }
    Ok(program)
}

fn replace_in_link(ebpf: &mut Ebpf, iface: &str, kind: &str, path: PathBuf) -> Result<Attachment> {
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
        let program = tc_program(ebpf)?;
        let id = program
            .attach_to_link(SchedClassifierLink::try_from(old)?)
            .with_context(|| format!("replacing the program in the TC link on {iface}"))?;
        let program_id = program.info()?.id();
        ("tc", program_id, FdLink::try_from(program.take_link(id)?)?)
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

fn attach_tc(ebpf: &mut Ebpf, iface: &str, dir: &Path) -> Result<Attachment> {
    let program = tc_program(ebpf)?;
    let program_id = program.info()?.id();
    let id = program
        .attach(iface, TcAttachType::Ingress)
        .with_context(|| format!("attaching TC ingress to {iface}"))?;
    let link = FdLink::try_from(program.take_link(id)?)
        .context("TC attached through netlink, which cannot be pinned (kernel older than 6.6?)")?;
    let path = pin_path(dir, "tc", iface);
    let link = link
        .pin(&path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(Attachment {
        iface: iface.to_string(),
        hook: "tc",
        adopted: false,
        program_id,
        pin_path: path,
        link: link.into(),
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
/// and pinned maps. Only the agent's own directory is touched.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    fs::remove_dir_all(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))
}

/// True if a previous agent left maps pinned under `pin_dir`.
pub fn maps_pinned(pin_dir: &Path) -> bool {
    fs::read_dir(maps_dir(pin_dir)).is_ok_and(|mut entries| entries.next().is_some())
}

/// The id of the program attached through the link pinned at `path`.
pub fn attached_program(path: &Path) -> Result<u32> {
    let link: FdLink = PinnedLink::from_pin(path)
        .with_context(|| format!("opening the link pinned at {}", path.display()))?
        .into();
    Ok(link.info().context("reading the link's info")?.program_id())
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
