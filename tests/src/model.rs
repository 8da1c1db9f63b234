//! A userspace reference model of the kernel's decision, independent of the kernel code:
//! frames are parsed with etherparse's header slices, and the policy is the one the agent
//! validated (not the tables built from it). The differential test holds the kernel to it
//! frame by frame, verdicts and malformed causes alike.
//!
//! Where the kernel deliberately differs from a general-purpose parser, the model follows
//! the kernel; these choices are all here, and nowhere else in the model:
//! 1. At most two VLAN tags are walked; a third tag's TPID is an ethertype that is not IP.
//! 2. At most `MAX_IPV6_EXT_HEADERS` IPv6 extension headers are walked; a longer chain is
//!    malformed, so that stacking headers cannot hide the transport header.
//! 3. Every extension header of the generic layout is walked wherever it stands: hop-by-hop
//!    after the first position too, and mobility, HIP and shim6 (etherparse takes those as
//!    upper-layer protocols and refuses a late hop-by-hop).
//! 4. An AH header whose length field is 0 is walked as 8 bytes (etherparse refuses it).
//! 5. Length fields are not read: headers are read as far as the frame goes (IPv4 total
//!    length, IPv6 payload length, UDP length); TCP options are not read, so a TCP header of
//!    20 bytes is whole whatever its data offset above 5 says; and an ICMP header is its
//!    first 8 bytes, whatever the message type (etherparse wants a timestamp message whole).
//! 6. The first fragment of a fragmented packet has its transport header read (its ports
//!    count); a later fragment has none, and after an IPv6 fragment header with a non-zero
//!    offset nothing more is walked.
//!
//! Rate limits are modelled without refill, so the model only accepts policies whose rates
//! are at most one token per hour: within a test run, no bucket gains a token. A group gets
//! a bucket at its second packet, through the kernel's admission sketch
//! (`agent_common::admission`, shared code): the model keeps the sketch's slots too, since
//! two groups sharing a slot can each cost the other its mark.
//!
//! HTTP routes are matched as the README states their semantics (a path, then the end of
//! the target, `/` or `?`; the longest path; a named method before none), on the TCP
//! payload from the data offset the header states, within the 192 target bytes the kernel
//! reads: not through the agent's route compiler. `http.strict` judges the README's evasive
//! shapes (`evasive_target`, written from that list, by segments rather than a byte scan).
//! A refusal that would reset a connection drops a fragment instead.
//!
//! The model sees no TC egress, so no connection is one the server accepted (the kernel's
//! `accepted`): every request a route limits charges the route's pool of unverified
//! requests, one bucket for all sources, is dropped when refused, and bans no one.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use agent_common::{
    Action, BucketKey, MalformedCause, Reason, admission,
    buckets::group_hash,
    http::{Method, TARGET_WINDOW},
};
use etherparse::{
    EtherType, Ethernet2Slice, Icmpv4Slice, Icmpv6Slice, IpAuthHeaderSlice, IpNumber,
    Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice,
    SingleVlanSlice, TcpHeaderSlice, UdpHeaderSlice, err,
};
use ipnet::IpNet;
use portcullis::policy::{Count, Limit, Mode, Policy, Protocol, http::RouteAction};

const HOUR_NS: u64 = 3_600_000_000_000;
/// Difference 1.
const MAX_VLAN_TAGS: usize = 2;
/// Difference 2: the same bound as the kernel's, chosen independently here.
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
    malformed: Option<MalformedCause>,
    /// TCP payload: from the data offset the header states to the end of the frame.
    payload: Option<Vec<u8>>,
    /// The TCP segment carries data within both the frame and its IP header's length.
    data: bool,
    /// The first fragment of a packet that more fragments follow.
    more_fragments: bool,
    /// A TCP segment's connection: source, destination, source port, destination port.
    flow: Option<(IpAddr, IpAddr, u16, u16)>,
    /// A TCP segment's sequence number.
    seq: u32,
}

#[derive(Debug, Clone)]
pub enum Parsed {
    NotIp,
    Malformed(MalformedCause),
    Ip(Packet),
}

pub fn parse(frame: &[u8]) -> Parsed {
    let Ok(eth) = Ethernet2Slice::from_slice_without_fcs(frame) else {
        return Parsed::Malformed(MalformedCause::TruncatedEthernet);
    };
    let mut ether_type = eth.ether_type();
    let mut rest = eth.payload_slice();
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != EtherType::VLAN_TAGGED_FRAME && ether_type != EtherType::PROVIDER_BRIDGING
        {
            break;
        }
        let Ok(vlan) = SingleVlanSlice::from_slice(rest) else {
            return Parsed::Malformed(MalformedCause::TruncatedVlan);
        };
        ether_type = vlan.ether_type();
        rest = vlan.payload_slice();
    }
    match ether_type {
        EtherType::IPV4 => parse_v4(rest),
        EtherType::IPV6 => parse_v6(rest),
        _ => Parsed::NotIp,
    }
}

fn parse_v4(ip: &[u8]) -> Parsed {
    use err::ipv4::HeaderSliceError;
    let header = match Ipv4HeaderSlice::from_slice(ip) {
        Ok(header) => header,
        Err(HeaderSliceError::Len(e)) if e.required_len > 20 => {
            return Parsed::Malformed(MalformedCause::TruncatedIpv4Options);
        }
        Err(HeaderSliceError::Len(_)) => return Parsed::Malformed(MalformedCause::TruncatedIpv4),
        Err(HeaderSliceError::Content(_)) => {
            return Parsed::Malformed(MalformedCause::BadIpv4Header);
        }
    };
    let first_fragment = header.fragments_offset().value() == 0;
    let l4 = &ip[header.slice().len()..];
    let stated = match header.total_len() {
        0 => usize::MAX,
        total => usize::from(total).saturating_sub(header.slice().len()),
    };
    let mut pkt = transport(
        header.source_addr().into(),
        header.protocol(),
        l4,
        stated,
        first_fragment,
        true,
    );
    pkt.more_fragments = first_fragment && header.more_fragments();
    Parsed::Ip(with_flow(pkt, header.destination_addr().into(), l4))
}

/// `pkt` with its connection, if it is a TCP segment with ports: the flow a reset is
/// remembered by.
fn with_flow(mut pkt: Packet, dst: IpAddr, l4: &[u8]) -> Packet {
    if pkt.class == Class::Tcp
        && let Some(port) = pkt.port
    {
        let sport = u16::from_be_bytes([l4[0], l4[1]]);
        pkt.flow = Some((pkt.src, dst, sport, port));
        pkt.seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
    }
    pkt
}

fn parse_v6(ip: &[u8]) -> Parsed {
    use err::ipv6::HeaderSliceError;
    let header = match Ipv6HeaderSlice::from_slice(ip) {
        Ok(header) => header,
        Err(HeaderSliceError::Len(_)) => return Parsed::Malformed(MalformedCause::TruncatedIpv6),
        Err(HeaderSliceError::Content(_)) => {
            return Parsed::Malformed(MalformedCause::BadIpv6Version);
        }
    };
    // Not a parser choice but the policy's: an IPv4-mapped source is judged as the IPv4
    // host it names.
    let src = match header.source_addr().to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(header.source_addr()),
    };
    let mut next = header.next_header();
    let mut rest = &ip[header.slice().len()..];
    // A first fragment's M flag (the last fragment header's, if several).
    let mut more_fragments = false;
    let malformed = |cause| {
        Parsed::Ip(Packet {
            src,
            class: Class::Other,
            port: None,
            syn: false,
            malformed: Some(cause),
            payload: None,
            data: false,
            more_fragments: false,
            flow: None,
            seq: 0,
        })
    };
    // Bytes of `rest` inside the IPv6 payload length.
    let stated = |rest: &[u8]| match header.payload_length() {
        0 => usize::MAX,
        length => (40 + usize::from(length)).saturating_sub(ip.len() - rest.len()),
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let walked = match next {
            // Difference 3: the generic layout, wherever it stands.
            IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS
            | IpNumber::MOBILITY_HEADER
            | IpNumber::HIP
            | IpNumber::SHIM6 => Ipv6RawExtHeaderSlice::from_slice(rest)
                .ok()
                .map(|h| (h.next_header(), h.slice().len(), false)),
            IpNumber::AUTHENTICATION_HEADER => auth_header(rest),
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                Ipv6FragmentHeaderSlice::from_slice(rest).ok().map(|h| {
                    more_fragments = h.more_fragments();
                    (
                        h.next_header(),
                        h.slice().len(),
                        h.fragment_offset().value() != 0,
                    )
                })
            }
            _ => {
                let mut pkt = transport(src, next, rest, stated(rest), true, false);
                pkt.more_fragments = more_fragments;
                let dst = header.destination_addr().into();
                return Parsed::Ip(with_flow(pkt, dst, rest));
            }
        };
        let Some((after, len, later_fragment)) = walked else {
            return malformed(MalformedCause::TruncatedExtensionHeader);
        };
        next = after;
        rest = &rest[len..];
        if later_fragment {
            return Parsed::Ip(transport(src, next, rest, stated(rest), false, false));
        }
    }
    // The chain is as long as allowed: only a transport header may come now.
    if is_extension_header(next) {
        return malformed(MalformedCause::TooManyExtensionHeaders);
    }
    let mut pkt = transport(src, next, rest, stated(rest), true, false);
    pkt.more_fragments = more_fragments;
    Parsed::Ip(with_flow(pkt, header.destination_addr().into(), rest))
}

/// The extension headers the model walks (difference 3: the generic layout for all but AH
/// and fragments).
fn is_extension_header(next: IpNumber) -> bool {
    matches!(
        next,
        IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS
            | IpNumber::MOBILITY_HEADER
            | IpNumber::HIP
            | IpNumber::SHIM6
            | IpNumber::AUTHENTICATION_HEADER
            | IpNumber::IPV6_FRAGMENTATION_HEADER
    )
}

/// An AH header: (next header, length, false). Difference 4: a length field of 0 is walked
/// as 8 bytes, where etherparse wants at least 12.
fn auth_header(rest: &[u8]) -> Option<(IpNumber, usize, bool)> {
    match IpAuthHeaderSlice::from_slice(rest) {
        Ok(h) => Some((h.next_header(), h.slice().len(), false)),
        Err(_) if rest.len() >= 8 && rest[1] == 0 => Some((IpNumber(rest[0]), 8, false)),
        Err(_) => None,
    }
}

fn class_of(protocol: IpNumber, v4: bool) -> Class {
    match (protocol, v4) {
        (IpNumber::TCP, _) => Class::Tcp,
        (IpNumber::UDP, _) => Class::Udp,
        (IpNumber::ICMP, true) | (IpNumber::IPV6_ICMP, false) => Class::Icmp,
        _ => Class::Other,
    }
}

/// The packet whose transport header starts `l4`, of which `stated` bytes are inside the
/// IP header's length (`usize::MAX` for a length of 0: a GSO packet too large for it).
fn transport(
    src: IpAddr,
    protocol: IpNumber,
    l4: &[u8],
    stated: usize,
    first_fragment: bool,
    v4: bool,
) -> Packet {
    let class = class_of(protocol, v4);
    let mut pkt = Packet {
        src,
        class,
        port: None,
        syn: false,
        malformed: None,
        payload: None,
        data: false,
        more_fragments: false,
        flow: None,
        seq: 0,
    };
    if !first_fragment {
        return pkt;
    }
    match class {
        Class::Tcp => match tcp_header(l4) {
            Ok((port, syn)) => {
                pkt.port = Some(port);
                pkt.syn = syn;
                let data_offset = usize::from(l4[12] >> 4) * 4;
                pkt.payload = l4.get(data_offset..).map(<[u8]>::to_vec);
                pkt.data = data_offset < l4.len().min(stated);
            }
            Err(cause) => pkt.malformed = Some(cause),
        },
        Class::Udp => match UdpHeaderSlice::from_slice(l4) {
            Ok(udp) => pkt.port = Some(udp.destination_port()),
            Err(_) => pkt.malformed = Some(MalformedCause::TruncatedUdp),
        },
        Class::Icmp => {
            // Difference 5: only the 8-byte header must be there; etherparse also wants a
            // timestamp message's body whole.
            let header_whole = |result: Result<(), err::LenError>| match result {
                Ok(()) => true,
                Err(e) => !matches!(e.layer, err::Layer::Icmpv4 | err::Layer::Icmpv6),
            };
            let whole = if v4 {
                header_whole(Icmpv4Slice::from_slice(l4).map(drop))
            } else {
                header_whole(Icmpv6Slice::from_slice(l4).map(drop))
            };
            if !whole {
                pkt.malformed = Some(MalformedCause::TruncatedIcmp);
            }
        }
        Class::Other => {}
    }
    pkt
}

/// The destination port and whether it is a SYN without ACK. Difference 5: options are not
/// read, so the header is parsed from its first 20 bytes with the data offset capped at 5.
fn tcp_header(l4: &[u8]) -> Result<(u16, bool), MalformedCause> {
    use err::tcp::HeaderSliceError;
    let Some(fixed) = l4.get(..20) else {
        return Err(MalformedCause::TruncatedTcp);
    };
    let mut fixed = <[u8; 20]>::try_from(fixed).expect("20 bytes");
    if fixed[12] >> 4 > 5 {
        fixed[12] = (5 << 4) | (fixed[12] & 0x0f);
    }
    match TcpHeaderSlice::from_slice(&fixed) {
        Ok(tcp) => Ok((tcp.destination_port(), tcp.syn() && !tcp.ack())),
        Err(HeaderSliceError::Len(_)) => Err(MalformedCause::TruncatedTcp),
        Err(HeaderSliceError::Content(_)) => Err(MalformedCause::BadTcpDataOffset),
    }
}

/// The decision state: buckets (tokens used), escalation counts and bans.
pub struct Model {
    policy: Policy,
    used: HashMap<(usize, IpNet), u64>,
    excess: HashMap<(usize, IpNet), u32>,
    /// The admission sketch: the tag each slot holds.
    admission: HashMap<u32, u64>,
    /// Kernel rule id of each rate limit, then of each route, by bucket owner index (see
    /// `Limited`): the sketch's slots depend on it.
    rule_ids: Vec<u32>,
    bans: HashMap<IpNet, usize>,
    /// Detector decisions (the kernel's DECISIONS maps), none ending during a test.
    decisions: Vec<IpNet>,
    pub verdicts: HashMap<Reason, u64>,
    pub shadow: HashMap<Reason, u64>,
    pub malformed: HashMap<MalformedCause, u64>,
}

fn contains(net: &IpNet, addr: &IpAddr) -> bool {
    net.contains(addr)
}

/// The kernel's bucket key of `group` under rule id `rule`: IPv4 groups as IPv4-mapped IPv6,
/// address words as they lie in memory (network order).
fn bucket_key(rule: u32, group: &IpNet) -> BucketKey {
    let octets = match group.network() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let word = |i: usize| u32::from_ne_bytes(octets[4 * i..4 * i + 4].try_into().unwrap());
    BucketKey {
        rule,
        addr: [word(0), word(1), word(2), word(3)],
    }
}

impl Model {
    /// The model of `policy`, whose rate limits the agent gave the ids in `rule_ids` (by
    /// name).
    pub fn new(policy: Policy, rule_ids: &HashMap<String, u32>) -> Self {
        let routes = policy.http.iter().flat_map(|http| &http.routes);
        let limits = policy
            .rate_limits
            .iter()
            .map(|rule| (&rule.name, &rule.limit))
            .chain(routes.clone().filter_map(|route| match &route.action {
                RouteAction::Limit(limit) => Some((&route.name, limit)),
                RouteAction::Deny => None,
            }));
        for (name, limit) in limits {
            assert!(
                limit.interval_ns >= HOUR_NS,
                "the model does not refill buckets; {name} refills faster than once an hour"
            );
            if let Some(ban) = limit.ban {
                assert!(
                    ban.within_ns >= HOUR_NS && ban.for_ns >= HOUR_NS,
                    "ban windows must outlast the test"
                );
            }
        }
        let rule_ids = policy
            .rate_limits
            .iter()
            .map(|rule| rule_ids[&rule.name])
            .chain(routes.map(|route| rule_ids[&route.name]))
            .collect();
        Self {
            policy,
            used: HashMap::new(),
            excess: HashMap::new(),
            admission: HashMap::new(),
            rule_ids,
            bans: HashMap::new(),
            decisions: Vec::new(),
            verdicts: HashMap::new(),
            shadow: HashMap::new(),
            malformed: HashMap::new(),
        }
    }

    /// A detector's decision on `net`, as the test also writes it into the kernel's maps.
    pub fn add_decision(&mut self, net: IpNet) {
        self.decisions.push(net);
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

    fn malformed(&mut self, cause: MalformedCause) -> (Action, Reason) {
        *self.malformed.entry(cause).or_default() += 1;
        self.finish(Reason::Malformed)
    }

    pub fn judge(&mut self, frame: &[u8]) -> (Action, Reason) {
        let pkt = match parse(frame) {
            Parsed::NotIp => return self.finish(Reason::NotIp),
            Parsed::Malformed(cause) => return self.malformed(cause),
            Parsed::Ip(pkt) => pkt,
        };
        self.judge_ip(&pkt)
    }

    fn judge_ip(&mut self, pkt: &Packet) -> (Action, Reason) {
        let pkt = pkt.clone();
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
        // A decision is always enforced; a packet it spares (on an HTTP connection) is not
        // judged by a ban either.
        let decided = self.decisions.iter().any(|n| contains(n, &pkt.src));
        if decided && let Some(action) = self.ban_refusal(&pkt) {
            self.finish(Reason::Decision);
            return (action, Reason::Decision);
        }
        let ban_mode = self
            .bans
            .iter()
            .filter(|(net, _)| !decided && contains(net, &pkt.src))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, &owner)| self.owner_mode(owner));
        if let Some(mode) = ban_mode
            && let Some(action) = self.ban_refusal(&pkt)
            && self.decide(Reason::Banned, mode)
        {
            self.finish(Reason::Banned);
            return (action, Reason::Banned);
        }
        if let Some(cause) = pkt.malformed {
            return self.malformed(cause);
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
                if self.take(self.rate_limit(rule), &pkt) {
                    return self.finish(Reason::RateLimited);
                }
            }
        }
        if let Some(mode) = self.evasive(&pkt)
            && self.decide(Reason::HttpEvasion, mode)
        {
            return self.refuse(&pkt, Reason::HttpEvasion);
        }
        if let Some(index) = self.route_for(&pkt) {
            let route = self.policy.http.as_ref().expect("routes").routes[index].clone();
            match &route.action {
                RouteAction::Deny => {
                    if self.decide(Reason::RouteDenied, route.mode) {
                        return self.refuse(&pkt, Reason::RouteDenied);
                    }
                }
                RouteAction::Limit(limit) => {
                    // No connection is verified here (see the module): the pool's bucket.
                    matched = true;
                    let limited = Limited {
                        owner: self.policy.rate_limits.len() + index,
                        limit: Limit {
                            ban: None,
                            ..*limit
                        },
                        mode: route.mode,
                        reason: Reason::RouteLimited,
                    };
                    let pool = Packet {
                        src: IpAddr::V6(Ipv6Addr::from([0xff; 16])),
                        ..pkt.clone()
                    };
                    if self.take(limited, &pool) {
                        let (_, reason) = self.finish(Reason::RouteLimited);
                        return (Action::Drop, reason);
                    }
                }
            }
        }
        self.finish(if matched {
            Reason::WithinLimit
        } else {
            Reason::NoMatch
        })
    }

    /// A request refused for `reason`: its connection reset, or a fragment dropped.
    fn refuse(&mut self, pkt: &Packet, reason: Reason) -> (Action, Reason) {
        let (action, reason) = self.finish(reason);
        if pkt.more_fragments {
            (Action::Drop, reason)
        } else {
            (action, reason)
        }
    }

    /// With `http.strict` on, the mode evasive requests are judged in if the packet's
    /// payload is one on an HTTP port: the HTTP/2 cleartext preface, or a request line
    /// whose target (as far as the kernel reads it) is evasive.
    fn evasive(&self, pkt: &Packet) -> Option<Mode> {
        let mode = self.policy.http.as_ref()?.strict?;
        if self.on_http_port(pkt) && pkt.payload.as_ref()?.starts_with(b"PRI * HT") {
            return Some(mode);
        }
        let (_, rest) = self.request_method(pkt)?;
        evasive_target(&rest[..rest.len().min(TARGET_WINDOW)]).then_some(mode)
    }

    fn on_http_port(&self, pkt: &Packet) -> bool {
        pkt.class == Class::Tcp
            && self
                .policy
                .http
                .as_ref()
                .is_some_and(|http| pkt.port.is_some_and(|port| http.ports.contains(&port)))
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

    fn rate_limit(&self, index: usize) -> Limited {
        let rule = &self.policy.rate_limits[index];
        Limited {
            owner: index,
            limit: rule.limit,
            mode: rule.mode,
            reason: Reason::RateLimited,
        }
    }

    /// What a banned source's packet gets: on a connection to an HTTP port, a reset if it
    /// carries data, nothing (`None`: the ban spares it) if not, as the README says; a drop
    /// for anything else, SYNs included.
    fn ban_refusal(&self, pkt: &Packet) -> Option<Action> {
        let on_http_port = self
            .policy
            .http
            .as_ref()
            .is_some_and(|http| pkt.port.is_some_and(|port| http.ports.contains(&port)));
        if pkt.class != Class::Tcp || !on_http_port || pkt.syn || pkt.more_fragments {
            return Some(Action::Drop);
        }
        pkt.data.then_some(Action::Reset)
    }

    /// The method of the request line the packet's payload starts on an HTTP port, and
    /// what follows "METHOD ".
    fn request_method<'a>(&self, pkt: &'a Packet) -> Option<(Method, &'a [u8])> {
        let http = self.policy.http.as_ref()?;
        if pkt.class != Class::Tcp || !http.ports.contains(&pkt.port?) {
            return None;
        }
        let payload = pkt.payload.as_deref()?;
        // The kernel reads a payload's first eight bytes at once: a shorter one starts no
        // request (a request line is longer than that).
        if payload.len() < 8 {
            return None;
        }
        Method::ALL.into_iter().find_map(|m| {
            let start = format!("{} ", m.name());
            payload.strip_prefix(start.as_bytes()).map(|rest| (m, rest))
        })
    }

    /// The route of the request the packet's payload starts, if it is on an HTTP port and
    /// a route matches: the route with the longest path, one naming the method before one
    /// that does not. Matched as the README states it, independently of the agent's route
    /// compiler: the path, then the end of the target, `/` or `?` (a path ending in `/` is
    /// a boundary itself), within the 192 bytes of target the kernel reads.
    fn route_for(&self, pkt: &Packet) -> Option<usize> {
        let http = self.policy.http.as_ref()?;
        let (method, rest) = self.request_method(pkt)?;
        let window = &rest[..rest.len().min(TARGET_WINDOW)];
        http.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.methods.is_empty() || r.methods.contains(&method))
            .filter(|(_, r)| {
                let path = r.path.as_bytes();
                window.starts_with(path)
                    && (path.ends_with(b"/")
                        || matches!(window.get(path.len()), Some(b' ' | b'/' | b'?')))
            })
            .max_by_key(|(_, r)| (r.path.len(), !r.methods.is_empty()))
            .map(|(i, _)| i)
    }

    /// The mode of the rule or route that owns bucket `owner`.
    fn owner_mode(&self, owner: usize) -> Mode {
        let limits = &self.policy.rate_limits;
        match limits.get(owner) {
            Some(rule) => rule.mode,
            None => self.policy.http.as_ref().expect("routes").routes[owner - limits.len()].mode,
        }
    }

    /// Takes a token; true when the packet must be dropped.
    fn take(&mut self, limited: Limited, pkt: &Packet) -> bool {
        let prefix = if pkt.src.is_ipv4() {
            limited.limit.prefix_v4
        } else {
            limited.limit.prefix_v6
        };
        let key = (limited.owner, IpNet::new(pkt.src, prefix).unwrap().trunc());
        if !self.used.contains_key(&key) {
            let (slot, tag) = admission::slot(group_hash(&bucket_key(
                self.rule_ids[limited.owner],
                &key.1,
            )));
            if self.admission.get(&slot) != Some(&tag) {
                // The group's first packet: a mark in the sketch, and it passes.
                self.admission.insert(slot, tag);
                return false;
            }
            self.admission.remove(&slot);
            self.used.insert(key, 1);
        }
        let used = self.used.entry(key).or_default();
        if *used < limited.limit.burst {
            *used += 1;
            return false;
        }
        if let Some(after) = limited.limit.ban.map(|ban| ban.after) {
            let excess = self.excess.entry(key).or_default();
            *excess += 1;
            if *excess >= after {
                *excess = 0;
                self.bans.insert(key.1, limited.owner);
            }
        }
        self.decide(limited.reason, limited.mode)
    }
}

/// What a bucket needs of its owner, a rate limit (owner = its index) or a route (owner =
/// the number of rate limits + its index).
#[derive(Debug, Clone, Copy)]
struct Limited {
    owner: usize,
    limit: Limit,
    mode: Mode,
    reason: Reason,
}

/// The README's evasive targets, on the `window` of target bytes the kernel reads: not
/// origin-form (except `*`), an empty or dot segment in the path, a percent-encoded
/// unreserved byte or `/` (or a `%` without two hex digits after it), a `#`, or no end of
/// the path (a space or `?`) within the window.
pub fn evasive_target(window: &[u8]) -> bool {
    match window.first() {
        Some(b'/') => {}
        Some(b'*') => return window.get(1) != Some(&b' '),
        _ => return true,
    }
    let Some(end) = window.iter().position(|b| matches!(b, b' ' | b'?')) else {
        return true;
    };
    let path = &window[..end];
    if path.contains(&b'#') {
        return true;
    }
    if path.windows(2).any(|w| w == b"//") {
        return true;
    }
    if path
        .split(|&b| b == b'/')
        .any(|segment| segment == b"." || segment == b"..")
    {
        return true;
    }
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .any(|(i, _)| {
            let digits = window
                .get(i + 1..i + 3)
                .filter(|d| d.iter().all(u8::is_ascii_hexdigit))
                .and_then(|d| std::str::from_utf8(d).ok());
            match digits.and_then(|d| u8::from_str_radix(d, 16).ok()) {
                Some(byte) => {
                    byte == b'/' || byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)
                }
                None => true,
            }
        })
}
