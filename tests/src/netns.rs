//! Two network namespaces joined by a veth pair: a client side and a server side where the
//! agent runs. Everything is removed when the guard drops, also when a test fails.

use std::{
    fs::File,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub const CLIENT_V4: &str = "10.77.0.1";
pub const SERVER_V4: &str = "10.77.0.2";
pub const CLIENT_V6: &str = "fd77::1";
pub const SERVER_V6: &str = "fd77::2";

pub struct NetnsPair {
    pub client_ns: String,
    pub server_ns: String,
    pub client_if: String,
    pub server_if: String,
}

/// Runs a command inside namespace `ns` and returns its standard output.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} (in {ns}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS` (in the calling thread's namespace), failing with its error text.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A tag for namespace and interface names: the process id so parallel runs do not
/// collide, and a counter so tests within a run do not; short, as interface names are
/// limited to 15 characters.
fn unique_tag() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}{n}", process_tag())
}

/// The part of every tag that names this process.
fn process_tag() -> String {
    format!("{}x", std::process::id() % 100_000)
}

/// Whether namespace `ns` is one that the process with `process_tag` made.
fn made_by(ns: &str, process_tag: &str) -> bool {
    ns.starts_with("pc-")
        && ns.rsplit_once(process_tag).is_some_and(|(_, counter)| {
            !counter.is_empty() && counter.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Deletes every namespace this process made, whatever holds it (for a run interrupted
/// before its guards could drop): their names.
pub fn remove_all_of_this_process() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let tag = process_tag();
    let list = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<String> = list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| made_by(ns, &tag))
        .map(str::to_string)
        .collect();
    for ns in &ours {
        let _ = ip(&["netns", "del", ns]);
    }
    ours
}

impl NetnsPair {
    /// Creates the pair with `CLIENT_V4`/`CLIENT_V6` on the client and `SERVER_V4`/
    /// `SERVER_V6` on the server.
    pub fn new() -> Result<Self> {
        let tag = unique_tag();
        let pair = Self {
            client_ns: format!("pc-c{tag}"),
            server_ns: format!("pc-s{tag}"),
            // Interface names are limited to 15 characters.
            client_if: format!("pcc{tag}"),
            server_if: format!("pcs{tag}"),
        };
        // From here on, Drop cleans up whatever was created.
        ip(&["netns", "add", &pair.client_ns])?;
        ip(&["netns", "add", &pair.server_ns])?;
        ip(&[
            "link",
            "add",
            &pair.client_if,
            "netns",
            &pair.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &pair.server_if,
            "netns",
            &pair.server_ns,
        ])?;
        for (ns, dev, v4, v6) in [
            (&pair.client_ns, &pair.client_if, CLIENT_V4, CLIENT_V6),
            (&pair.server_ns, &pair.server_if, SERVER_V4, SERVER_V6),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        pair.wait_for_ipv6()?;
        Ok(pair)
    }

    /// IPv6 neighbour discovery only works once addrconf has seen the carrier come up,
    /// which it marks by adding the link-local address; until then IPv6 traffic stalls.
    fn wait_for_ipv6(&self) -> Result<()> {
        let has_link_local = |ns: &str, dev: &str| {
            Command::new("ip")
                .args(["-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("fe80"))
        };
        for _ in 0..100 {
            if has_link_local(&self.client_ns, &self.client_if)
                && has_link_local(&self.server_ns, &self.server_if)
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("IPv6 did not come up on the veth pair within 5 s")
    }

    /// Adds another source address on the client side (IPv4 /24 or IPv6 /64 assumed).
    pub fn add_client_addr(&self, addr: &str) -> Result<()> {
        let cidr = if addr.contains(':') {
            format!("{addr}/64")
        } else {
            format!("{addr}/24")
        };
        ip(&[
            "-n",
            &self.client_ns,
            "addr",
            "add",
            &cidr,
            "dev",
            &self.client_if,
            "nodad",
        ])
    }

    /// Gives the server side a default route through the client, as a node has one
    /// through its uplink.
    pub fn add_server_default_route(&self) -> Result<()> {
        ip(&[
            "-n",
            &self.server_ns,
            "route",
            "add",
            "default",
            "via",
            CLIENT_V4,
        ])
    }

    /// Makes the client's entry for `SERVER_V4` permanent. A flood that overflows the
    /// server's receive ring drops ARP with the rest, and an unanswered ARP holds every
    /// packet the client sends meanwhile; a pinned entry keeps the test about the filter.
    pub fn pin_server_neighbour(&self) -> Result<()> {
        let mac = self
            .server_mac()?
            .map(|byte| format!("{byte:02x}"))
            .join(":");
        ip(&[
            "-n",
            &self.client_ns,
            "neigh",
            "replace",
            SERVER_V4,
            "lladdr",
            &mac,
            "dev",
            &self.client_if,
            "nud",
            "permanent",
        ])
    }

    /// Frames the server interface received (`ip -s link`: XDP drops included).
    pub fn server_rx_packets(&self) -> Result<u64> {
        self.server_link_stats()?["rx"]["packets"]
            .as_u64()
            .context("no rx packets in ip -s -j link")
    }

    /// Frames the server interface's ring dropped because the receiving side was behind
    /// (`ip -s link`: veth counts its peer's failed deliveries there).
    pub fn server_rx_dropped(&self) -> Result<u64> {
        self.server_link_stats()?["rx"]["dropped"]
            .as_u64()
            .context("no rx dropped in ip -s -j link")
    }

    fn server_link_stats(&self) -> Result<serde_json::Value> {
        let out = Command::new("ip")
            .args(["-n", &self.server_ns, "-s", "-j", "link", "show", "dev"])
            .arg(&self.server_if)
            .output()
            .context("running ip -s -j link")?;
        let links: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("ip -s -j link")?;
        Ok(links[0]["stats64"].clone())
    }

    /// UDP datagrams that reached the server's stack with no socket (`Udp: NoPorts`): what
    /// no filter dropped of a flood to a port nobody listens on.
    pub fn server_udp_no_ports(&self) -> Result<u64> {
        let snmp = in_ns(&self.server_ns, &["cat", "/proc/net/snmp"])?;
        let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
        let (names, values) = udp
            .next()
            .zip(udp.next())
            .context("no Udp lines in /proc/net/snmp")?;
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "NoPorts")
            .and_then(|(_, value)| value.parse().ok())
            .context("no Udp NoPorts in /proc/net/snmp")
    }

    /// The server interface's MAC address.
    pub fn server_mac(&self) -> Result<[u8; 6]> {
        mac(&self.server_ns, &self.server_if)
    }

    /// Runs `f` on a thread that has entered namespace `ns`; sockets it opens live there.
    pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                    f()
                })
                .join()
                .expect("namespace thread panicked")
        })
    }

    /// Sets the MTU of both ends of the pair (jumbo frames for large-packet tests).
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        for (ns, dev) in [
            (&self.client_ns, &self.client_if),
            (&self.server_ns, &self.server_if),
        ] {
            ip(&["-n", ns, "link", "set", "dev", dev, "mtu", &mtu])?;
        }
        Ok(())
    }

    pub fn client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::run_in(&self.client_ns, f)
    }

    pub fn server<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::run_in(&self.server_ns, f)
    }
}

/// The MAC address of `iface` in namespace `ns`.
pub fn mac(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", "dev", iface])
        .output()
        .context("running ip")?;
    // "pcs1x0@if2  UP  aa:bb:cc:dd:ee:ff <BROADCAST,...>"
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("no MAC address in {text:?}"))?;
    let mut bytes = [0u8; 6];
    for (byte, part) in bytes.iter_mut().zip(mac.split(':')) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC address {mac}"))?;
    }
    Ok(bytes)
}

/// A third namespace joined to a pair's server by its own veth pair: traffic from it
/// reaches the server on another interface, as through another NIC queue, so it does not
/// share a receive ring with the client's. Removed on drop.
pub struct SideLink {
    pub ns: String,
    /// The interface in `ns`.
    pub iface: String,
    /// Its peer, in the server namespace.
    pub server_if: String,
}

impl SideLink {
    pub fn join(pair: &NetnsPair) -> Result<Self> {
        let tag = unique_tag();
        let link = Self {
            ns: format!("pc-a{tag}"),
            iface: format!("pca{tag}"),
            server_if: format!("pcx{tag}"),
        };
        ip(&["netns", "add", &link.ns])?;
        ip(&[
            "link",
            "add",
            &link.iface,
            "netns",
            &link.ns,
            "type",
            "veth",
            "peer",
            "name",
            &link.server_if,
            "netns",
            &pair.server_ns,
        ])?;
        ip(&["-n", &link.ns, "link", "set", &link.iface, "up"])?;
        ip(&["-n", &pair.server_ns, "link", "set", &link.server_if, "up"])?;
        Ok(link)
    }
}

impl Drop for SideLink {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the peer.
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A hub namespace joined to several leaf namespaces ("nodes") by a veth pair each: leaf
/// `i` has `10.78.i.2/24` on its end and a default route through the hub's `10.78.i.1`.
/// Nodes share a service in the hub (a CrowdSec Local API on `0.0.0.0`) and see traffic
/// from the hub's other addresses (`add_hub_addr`). Removed on drop.
pub struct Star {
    pub hub_ns: String,
    pub leaves: Vec<Leaf>,
}

pub struct Leaf {
    pub ns: String,
    /// The leaf's end of its link (where an agent attaches).
    pub iface: String,
    pub addr: String,
    /// The hub's address on this leaf's link.
    pub hub_addr: String,
}

impl Star {
    pub fn new(leaves: usize) -> Result<Self> {
        let tag = unique_tag();
        let mut star = Self {
            hub_ns: format!("pc-h{tag}"),
            leaves: Vec::new(),
        };
        ip(&["netns", "add", &star.hub_ns])?;
        ip(&["-n", &star.hub_ns, "link", "set", "lo", "up"])?;
        for i in 0..leaves {
            let leaf = Leaf {
                ns: format!("pc-n{i}{tag}"),
                iface: format!("pcn{i}{tag}"),
                addr: format!("10.78.{i}.2"),
                hub_addr: format!("10.78.{i}.1"),
            };
            let hub_if = format!("pch{i}{tag}");
            ip(&["netns", "add", &leaf.ns])?;
            // From here on, Drop removes this leaf too.
            star.leaves.push(leaf);
            let leaf = star.leaves.last().expect("just pushed");
            ip(&[
                "link",
                "add",
                &leaf.iface,
                "netns",
                &leaf.ns,
                "type",
                "veth",
                "peer",
                "name",
                &hub_if,
                "netns",
                &star.hub_ns,
            ])?;
            ip(&["-n", &leaf.ns, "link", "set", "lo", "up"])?;
            for (ns, dev, addr) in [
                (&leaf.ns, &leaf.iface, &leaf.addr),
                (&star.hub_ns, &hub_if, &leaf.hub_addr),
            ] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
            ip(&[
                "-n",
                &leaf.ns,
                "route",
                "add",
                "default",
                "via",
                &leaf.hub_addr,
            ])?;
        }
        Ok(star)
    }

    /// Adds `addr` (IPv4) to the hub, as a host every leaf reaches through its link.
    pub fn add_hub_addr(&self, addr: &str) -> Result<()> {
        ip(&[
            "-n",
            &self.hub_ns,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ])
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        for leaf in &self.leaves {
            let _ = ip(&["netns", "del", &leaf.ns]);
        }
        let _ = ip(&["netns", "del", &self.hub_ns]);
    }
}
