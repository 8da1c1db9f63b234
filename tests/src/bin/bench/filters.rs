//! The filters the benchmarks compare, each installed on the server side of a fresh veth
//! pair with the same limits: Portcullis on each hook, iptables and nftables.

use std::{io::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use portcullis_tests::{
    agent::Agent,
    netns::{NetnsPair, in_ns},
    test_programs::{self, DROP_ALL, DROP_ALL_BUSY, FLOOR},
};
use tempfile::TempDir;

/// The flood's source network: denied outright, or limited per source.
pub const FLOOD_NET: &str = "100.64.0.0/10";
/// The per-source limit every rate-limiting filter applies to UDP.
pub const LIMIT_PER_SECOND: u32 = 100;
pub const LIMIT_BURST: u32 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    None,
    /// An XDP program that reads the source address and drops: what the test bed handles
    /// at best.
    DropAll,
    /// The ceiling with about 80 ns of known work added: how much flood time a known
    /// amount of program time costs in this bed.
    DropAllBusy,
    /// An XDP program that only passes: what a frame that an XDP program lets through
    /// costs the bed (on veth, more than a frame with no program at all).
    PassAll,
    /// Portcullis on XDP, denying the flood's network; `events` false sets the budget to 0.
    PortcullisXdpDeny {
        events: bool,
    },
    PortcullisXdpLimit,
    PortcullisTcDeny,
    /// iptables raw table, `-s FLOOD_NET -j DROP`: the cheapest thing iptables can do.
    IptablesDrop,
    /// iptables raw table, `hashlimit` per source IP.
    IptablesHashlimit,
    /// nftables at the raw priority, a meter per source IP.
    NftMeter,
}

impl Filter {
    pub fn label(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::DropAll => "XDP read source + drop (test bed ceiling)",
            Filter::DropAllBusy => "XDP read source + 4 clock reads + drop (bed calibration)",
            Filter::PassAll => "XDP pass only (the bed's cost of a passed frame)",
            Filter::PortcullisXdpDeny { events: true } => "Portcullis XDP deny",
            Filter::PortcullisXdpDeny { events: false } => "Portcullis XDP deny, events off",
            Filter::PortcullisXdpLimit => "Portcullis XDP rate limit",
            Filter::PortcullisTcDeny => "Portcullis TC deny",
            Filter::IptablesDrop => "iptables raw DROP by source",
            Filter::IptablesHashlimit => "iptables raw hashlimit",
            Filter::NftMeter => "nftables meter",
        }
    }

    /// Installs the filter on `ifaces` in `pair`'s server namespace. What it installs goes
    /// with the namespace or with the returned guard.
    pub fn install(self, pair: &NetnsPair, ifaces: &[&str]) -> Result<Installed> {
        let ns = &pair.server_ns;
        for iface in ifaces {
            // veth only takes frames from an XDP_TX/redirect (the generator) when its NAPI
            // is on: an XDP program turns it on, and so does GRO for the other filters.
            in_ns(ns, &["ethtool", "-K", iface, "gro", "on"])?;
        }
        let limit = format!(
            "{{name: flood, protocol: udp, rate: {LIMIT_PER_SECOND}/s, burst: {LIMIT_BURST}}}"
        );
        match self {
            Filter::None => Ok(Installed::default()),
            Filter::DropAll => test_program(pair, ifaces, DROP_ALL),
            Filter::DropAllBusy => test_program(pair, ifaces, DROP_ALL_BUSY),
            Filter::PassAll => test_program(pair, ifaces, FLOOR),
            Filter::PortcullisXdpDeny { events } => {
                let budget = if events {
                    ""
                } else {
                    "events: {per_second: 0}\n"
                };
                portcullis(
                    pair,
                    ifaces,
                    &format!("deny: [{FLOOD_NET}]\n{budget}"),
                    "xdp",
                )
            }
            Filter::PortcullisXdpLimit => {
                portcullis(pair, ifaces, &format!("rate_limits:\n  - {limit}\n"), "xdp")
            }
            Filter::PortcullisTcDeny => {
                portcullis(pair, ifaces, &format!("deny: [{FLOOD_NET}]\n"), "tc")
            }
            Filter::IptablesDrop => iptables_raw(pair, &["-s", FLOOD_NET, "-j", "DROP"]),
            Filter::IptablesHashlimit => iptables_raw(
                pair,
                &[
                    "-p",
                    "udp",
                    "-m",
                    "hashlimit",
                    "--hashlimit-above",
                    &format!("{LIMIT_PER_SECOND}/sec"),
                    "--hashlimit-burst",
                    &LIMIT_BURST.to_string(),
                    "--hashlimit-mode",
                    "srcip",
                    "--hashlimit-name",
                    "portcullis-bench",
                    "-j",
                    "DROP",
                ],
            ),
            Filter::NftMeter => {
                let ruleset = format!(
                    "table ip bench {{\n  chain pre {{\n    type filter hook prerouting priority raw;\n    \
                     udp dport 0-65535 meter flood {{ ip saddr limit rate over {LIMIT_PER_SECOND}/second burst {LIMIT_BURST} packets }} drop\n  }}\n}}\n"
                );
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &pair.server_ns, "nft", "-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("running nft")?;
                child
                    .stdin
                    .take()
                    .context("nft stdin")?
                    .write_all(ruleset.as_bytes())?;
                let out = child.wait_with_output()?;
                if !out.status.success() {
                    bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
                Ok(Installed::default())
            }
        }
    }
}

/// What a filter needs kept alive; iptables and nftables rules go with the namespace.
#[derive(Default)]
pub struct Installed {
    pub agent: Option<Agent>,
    /// Holds a test program's attachment (`DropAll`, `PassAll`): dropping the object
    /// detaches it.
    _object: Option<(Ebpf, &'static str)>,
    _policy_dir: Option<TempDir>,
}

impl Installed {
    /// The XDP or TC program judging the flood, for those that are BPF programs: the
    /// agent's (as its status names it) or the test program's.
    pub fn program_id(&self) -> Result<Option<u32>> {
        if let Some(agent) = &self.agent {
            let status = agent.status().context("the agent answers")?;
            let id = status["interfaces"][0]["program_id"]
                .as_u64()
                .context("no program id in status")?;
            return Ok(Some(id as u32));
        }
        let Some((object, name)) = &self._object else {
            return Ok(None);
        };
        let program: &Xdp = object
            .program(name)
            .with_context(|| format!("no {name} program"))?
            .try_into()?;
        Ok(Some(program.info()?.id()))
    }
}

/// Appends `rule` to the raw table's PREROUTING chain, where iptables sees packets first.
fn iptables_raw(pair: &NetnsPair, rule: &[&str]) -> Result<Installed> {
    let command = [&["iptables", "-t", "raw", "-A", "PREROUTING"], rule].concat();
    in_ns(&pair.server_ns, &command)?;
    Ok(Installed::default())
}

fn portcullis(pair: &NetnsPair, ifaces: &[&str], policy: &str, hook: &str) -> Result<Installed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy)?;
    // Native XDP or nothing: a silent fallback to skb mode would measure something else.
    let mut args = vec!["--hook", hook];
    if hook == "xdp" {
        args.extend(["--xdp-mode", "native"]);
    }
    for iface in &ifaces[1..] {
        args.extend(["--iface", iface]);
    }
    let agent = Agent::start(&pair.server_ns, ifaces[0], &path, &args)?;
    Ok(Installed {
        agent: Some(agent),
        _policy_dir: Some(dir),
        ..Default::default()
    })
}

/// Attaches the test program `name` (native XDP) to `ifaces`.
fn test_program(pair: &NetnsPair, ifaces: &[&str], name: &'static str) -> Result<Installed> {
    let mut object = test_programs::load(&[name])?;
    let program: &mut Xdp = object
        .program_mut(name)
        .with_context(|| format!("no {name} program"))?
        .try_into()?;
    for iface in ifaces {
        pair.server(|| program.attach(iface, XdpMode::Driver))
            .with_context(|| format!("attaching {name} to {iface}"))?;
    }
    Ok(Installed {
        _object: Some((object, name)),
        ..Default::default()
    })
}
