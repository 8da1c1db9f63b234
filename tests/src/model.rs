//! A userspace reference model of the kernel's decision, written independently of the
//! kernel code: a plain slice parser and the policy as the agent validated it (not the
//! tables built from it). The differential test holds the kernel to it frame by frame.
//!
//! Rate limits are modelled without refill, so the model only accepts policies whose rates
//! are at most one token per hour: within a test run, no bucket gains a token.

use std::{collections::HashMap, net::IpAddr};

use agent_common::{Action, Reason};
use ipnet::IpNet;
use portcullis::policy::{Count, Mode, Policy, Protocol, RateLimit};

const HOUR_NS: u64 = 3_600_000_000_000;
/// Same bound as the kernel's, chosen independently here: more headers are malformed.
const MAX_IPV6_EXT_HEADERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Tcp,
    Udp,
    Icmp,
    Other,
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub src: IpAddr,
    class: Class,
    port: Option<u16>,
    syn: bool,
    malformed: bool,
}

#[derive(Debug, Clone)]
pub enum Parsed {
    NotIp,
    Malformed,
    Ip(Packet),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

pub fn parse(frame: &[u8]) -> Parsed {
    let Some(mut ether_type) = be16(frame, 12) else {
        return Parsed::Malformed;
    };
    let mut at = 14;
    for _ in 0..2 {
        if ether_type != 0x8100 && ether_type != 0x88a8 {
            break;
        }
        match be16(frame, at + 2) {
            Some(inner) => ether_type = inner,
            None => return Parsed::Malformed,
        }
        at += 4;
    }
    match ether_type {
        0x0800 => parse_v4(&frame[at..]),
        0x86dd => parse_v6(&frame[at..]),
        _ => Parsed::NotIp,
    }
}

fn parse_v4(ip: &[u8]) -> Parsed {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Parsed::Malformed;
    }
    let header_len = (ip[0] & 0x0f) as usize * 4;
    if ip.len() < header_len {
        return Parsed::Malformed;
    }
    let src = IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
    let first_fragment = be16(ip, 6).unwrap() & 0x1fff == 0;
    Parsed::Ip(transport(
        src,
        ip[9],
        &ip[header_len..],
        first_fragment,
        true,
    ))
}

fn parse_v6(ip: &[u8]) -> Parsed {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let src = IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let mut next = ip[6];
    let mut rest = &ip[40..];
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let len = match next {
            0 | 43 | 60 | 135 | 139 | 140 => rest.get(1).map(|&l| (l as usize + 1) * 8),
            51 => rest.get(1).map(|&l| (l as usize + 2) * 4),
            44 => Some(8),
            _ => return Parsed::Ip(transport(src, next, rest, true, false)),
        };
        let Some(len) = len.filter(|&l| l <= rest.len()) else {
            return Parsed::Ip(malformed(src, next));
        };
        let header = &rest[..len];
        rest = &rest[len..];
        let later_fragment = next == 44 && be16(header, 2).unwrap() & 0xfff8 != 0;
        next = header[0];
        if later_fragment {
            return Parsed::Ip(transport(src, next, rest, false, false));
        }
    }
    Parsed::Ip(malformed(src, next))
}

fn class_of(protocol: u8, v4: bool) -> Class {
    match (protocol, v4) {
        (6, _) => Class::Tcp,
        (17, _) => Class::Udp,
        (1, true) | (58, false) => Class::Icmp,
        _ => Class::Other,
    }
}

fn malformed(src: IpAddr, _protocol: u8) -> Packet {
    Packet {
        src,
        class: Class::Other,
        port: None,
        syn: false,
        malformed: true,
    }
}

fn transport(src: IpAddr, protocol: u8, l4: &[u8], first_fragment: bool, v4: bool) -> Packet {
    let class = class_of(protocol, v4);
    let mut pkt = Packet {
        src,
        class,
        port: None,
        syn: false,
        malformed: false,
    };
    if !first_fragment {
        return pkt;
    }
    match class {
        Class::Tcp => {
            if l4.len() < 20 || l4[12] >> 4 < 5 {
                pkt.malformed = true;
            } else {
                pkt.port = be16(l4, 2);
                pkt.syn = l4[13] & 0x12 == 0x02;
            }
        }
        Class::Udp => {
            if l4.len() < 8 {
                pkt.malformed = true;
            } else {
                pkt.port = be16(l4, 2);
            }
        }
        Class::Icmp => pkt.malformed = l4.len() < 8,
        Class::Other => {}
    }
    pkt
}

/// The decision state: buckets (tokens used), escalation counts and bans.
pub struct Model {
    policy: Policy,
    used: HashMap<(usize, IpNet), u64>,
    excess: HashMap<(usize, IpNet), u32>,
    bans: HashMap<IpNet, usize>,
    pub verdicts: HashMap<Reason, u64>,
    pub shadow: HashMap<Reason, u64>,
}

fn contains(net: &IpNet, addr: &IpAddr) -> bool {
    net.contains(addr)
}

fn group(rule: &RateLimit, src: IpAddr) -> IpNet {
    let prefix = if src.is_ipv4() {
        rule.prefix_v4
    } else {
        rule.prefix_v6
    };
    IpNet::new(src, prefix).unwrap().trunc()
}

impl Model {
    pub fn new(policy: Policy) -> Self {
        for rule in &policy.rate_limits {
            assert!(
                rule.interval_ns >= HOUR_NS,
                "the model does not refill buckets; rule {} refills faster than once an hour",
                rule.name
            );
            if let Some(ban) = rule.ban {
                assert!(
                    ban.within_ns >= HOUR_NS && ban.for_ns >= HOUR_NS,
                    "ban windows must outlast the test"
                );
            }
        }
        Self {
            policy,
            used: HashMap::new(),
            excess: HashMap::new(),
            bans: HashMap::new(),
            verdicts: HashMap::new(),
            shadow: HashMap::new(),
        }
    }

    fn finish(&mut self, reason: Reason) -> (Action, Reason) {
        *self.verdicts.entry(reason).or_default() += 1;
        (reason.action(), reason)
    }

    /// True when an enforced decision drops the packet; shadow decisions are counted.
    fn decide(&mut self, reason: Reason, mode: Mode) -> bool {
        match mode {
            Mode::Enforce => true,
            Mode::Shadow => {
                *self.shadow.entry(reason).or_default() += 1;
                false
            }
        }
    }

    pub fn judge(&mut self, frame: &[u8]) -> (Action, Reason) {
        let pkt = match parse(frame) {
            Parsed::NotIp => return self.finish(Reason::NotIp),
            Parsed::Malformed => return self.finish(Reason::Malformed),
            Parsed::Ip(pkt) => pkt,
        };
        if self.policy.allow.iter().any(|n| contains(n, &pkt.src)) {
            return self.finish(Reason::Allowed);
        }
        let deny_mode = self
            .policy
            .deny
            .iter()
            .filter(|d| contains(&d.net, &pkt.src))
            .max_by_key(|d| d.net.prefix_len())
            .map(|d| d.mode);
        if let Some(mode) = deny_mode
            && self.decide(Reason::Denied, mode)
        {
            return self.finish(Reason::Denied);
        }
        let ban_mode = self
            .bans
            .iter()
            .filter(|(net, _)| contains(net, &pkt.src))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, &rule)| self.policy.rate_limits[rule].mode);
        if let Some(mode) = ban_mode
            && self.decide(Reason::Banned, mode)
        {
            return self.finish(Reason::Banned);
        }
        if pkt.malformed {
            return self.finish(Reason::Malformed);
        }
        let mut matched = false;
        let kinds: &[Count] = if pkt.syn {
            &[Count::Connections, Count::Packets]
        } else {
            &[Count::Packets]
        };
        for &count in kinds {
            if let Some(rule) = self.rule_for(&pkt, count) {
                matched = true;
                if self.take(rule, &pkt) {
                    return self.finish(Reason::RateLimited);
                }
            }
        }
        self.finish(if matched {
            Reason::WithinLimit
        } else {
            Reason::NoMatch
        })
    }

    /// The most specific rule of kind `count` for the packet: a port rule, else a rule for
    /// its protocol, else a rule for every protocol.
    fn rule_for(&self, pkt: &Packet, count: Count) -> Option<usize> {
        let protocol_matches = |p: Protocol| {
            matches!(
                (p, pkt.class),
                (Protocol::Tcp, Class::Tcp)
                    | (Protocol::Udp, Class::Udp)
                    | (Protocol::Icmp, Class::Icmp)
            )
        };
        let rules = &self.policy.rate_limits;
        let candidates = || rules.iter().enumerate().filter(|(_, r)| r.count == count);
        if let Some(port) = pkt.port {
            let by_port = candidates().find(|(_, r)| {
                protocol_matches(r.protocol) && r.ports.iter().any(|&(a, b)| a <= port && port <= b)
            });
            if let Some((i, _)) = by_port {
                return Some(i);
            }
        }
        candidates()
            .find(|(_, r)| protocol_matches(r.protocol) && r.ports.is_empty())
            .or_else(|| candidates().find(|(_, r)| r.protocol == Protocol::Any))
            .map(|(i, _)| i)
    }

    /// Takes a token; true when the packet must be dropped.
    fn take(&mut self, index: usize, pkt: &Packet) -> bool {
        let rule = self.policy.rate_limits[index].clone();
        let key = (index, group(&rule, pkt.src));
        let used = self.used.entry(key).or_default();
        if *used < rule.burst {
            *used += 1;
            return false;
        }
        if let Some(ban) = rule.ban {
            let excess = self.excess.entry(key).or_default();
            *excess += 1;
            if *excess >= ban.after {
                *excess = 0;
                self.bans.insert(key.1, index);
            }
        }
        self.decide(Reason::RateLimited, rule.mode)
    }
}
