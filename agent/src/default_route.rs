//! The interfaces of the default routes (IPv4 and IPv6) in the agent's network namespace,
//! for `--iface-of-default-route`: on a node, where traffic from outside arrives, without
//! naming an interface that differs from node to node.

use anyhow::{Context as _, Result, bail};

const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// The interface of the IPv4 default route and that of the IPv6 one (the lowest metric of
/// each), without repeats.
pub fn interfaces() -> Result<Vec<String>> {
    let v4 = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    // Absent when IPv6 is disabled.
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let ifaces = from_tables(&v4, &v6);
    if ifaces.is_empty() {
        bail!(
            "--iface-of-default-route: there is no default route in this network namespace; \
             name the interfaces with --iface"
        );
    }
    Ok(ifaces)
}

fn from_tables(v4: &str, v6: &str) -> Vec<String> {
    let mut ifaces: Vec<String> = Vec::new();
    for iface in [default_v4(v4), default_v6(v6)].into_iter().flatten() {
        if !ifaces.contains(&iface) {
            ifaces.push(iface);
        }
    }
    ifaces
}

/// `/proc/net/route`: Iface Destination Gateway Flags RefCnt Use Metric Mask ..., with
/// addresses and flags in hex and the metric in decimal.
fn default_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let default = f.get(1)? == &"00000000" && f.get(7)? == &"00000000";
            let metric: u32 = f.get(6)?.parse().ok()?;
            (default && flags & RTF_UP != 0).then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// `/proc/net/ipv6_route`: destination, prefix length, source, source prefix length, next
/// hop, metric, refcount, use, flags, interface, all numbers in hex.
fn default_v6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let default = f.first()?.bytes().all(|b| b == b'0') && f.get(1)? == &"00";
            let metric = u32::from_str_radix(f.get(5)?, 16).ok()?;
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            let iface = *f.get(9)?;
            // The kernel's own "unreachable" default sits on lo.
            let usable = flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && iface != "lo";
            (default && usable).then(|| (metric, iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const V6: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth2
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn picks_the_lowest_metric_default_of_each_family_once() {
        assert_eq!(from_tables(V4, V6), ["eth0", "eth2"]);
        assert_eq!(from_tables(V4, ""), ["eth0"]);
        let same = V6.replace("eth2", "eth0");
        assert_eq!(from_tables(V4, &same), ["eth0"]);
    }

    #[test]
    fn ignores_routes_that_are_not_usable_defaults() {
        let not_default = V4
            .lines()
            .take(1)
            .chain(V4.lines().skip(3))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(from_tables(&not_default, "").is_empty());
        let down = V4.replace("0003", "0002");
        assert!(from_tables(&down, "").is_empty());
        // Only the kernel's unreachable default on lo.
        let lo_only: String = V6.lines().skip(2).collect();
        assert!(from_tables("", &lo_only).is_empty());
    }
}
