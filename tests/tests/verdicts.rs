//! Every reason code on crafted frames, through the real programs (BPF_PROG_TEST_RUN),
//! with the agent's own policy loading. Stateless cases run through XDP and TC and must
//! agree; stateful ones (buckets, bans) use XDP.

use std::time::Duration;

use agent_common::{Action, DecisionEntry, MalformedCause, Reason, decision::Origin};
use portcullis::maps::Counters;
use portcullis_tests::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, FrameSpec, non_ip},
    harness::Harness,
    require_kernel,
};

const POLICY: &str = r#"
allow:
  - 10.1.0.0/16
  - 2001:db8:a::/48
deny:
  - 10.0.0.0/8
  - cidr: 192.0.2.0/24
    mode: shadow
    name: watchlist
  - 198.51.100.0/24
  - cidr: 198.51.100.128/25
    mode: shadow
    name: carveout
  - 2001:db8:bad::/48
rate_limits:
  - name: dns
    protocol: udp
    ports: [53]
    rate: 1/h
    burst: 3
  - name: login
    protocol: tcp
    ports: [443, "8000-8010"]
    count: connections
    rate: 1/h
    burst: 2
    ban: { after: 3, within: 1h, for: 1h }
  - name: web-shadow
    protocol: tcp
    ports: [8080]
    rate: 1/h
    burst: 1
    mode: shadow
  - name: mdns-by-64
    protocol: udp
    ports: [5353]
    rate: 1/h
    burst: 2
  - name: syslog-by-24
    protocol: udp
    ports: [514]
    rate: 1/h
    burst: 2
    prefix_v4: 24
"#;

/// Counters that moved, by reason: (verdicts, shadow hits).
type Moved = Vec<(Reason, u64)>;

fn delta(before: &Counters, after: &Counters) -> (Moved, Moved) {
    let changed = |f: &dyn Fn(&Counters, Reason) -> u64| {
        Reason::ALL
            .iter()
            .filter_map(|&r| {
                let d = f(after, r) - f(before, r);
                (d > 0).then_some((r, d))
            })
            .collect::<Vec<_>>()
    };
    (
        changed(&|c, r| c.verdict(r)),
        changed(&|c, r| c.shadowed(r)),
    )
}

/// Runs `frame` through XDP and checks the verdict, the reason counted and the shadow hits.
fn check_xdp(h: &Harness, what: &str, frame: &[u8], want: Reason, shadow: &[Reason]) {
    let before = h.counters().unwrap();
    let action = h.xdp(frame).unwrap();
    let after = h.counters().unwrap();
    let (verdicts, shadows) = delta(&before, &after);
    assert_eq!(
        action,
        want.action(),
        "{what}: XDP verdict (counted {verdicts:?})"
    );
    assert_eq!(verdicts, vec![(want, 1)], "{what}: reason counted by XDP");
    let want_shadow: Vec<(Reason, u64)> = shadow.iter().map(|&r| (r, 1)).collect();
    assert_eq!(shadows, want_shadow, "{what}: shadow hits");
}

/// As `check_xdp`, then the same frame through TC: same verdict, same reason.
fn check_both(h: &Harness, what: &str, frame: &[u8], want: Reason, shadow: &[Reason]) {
    check_xdp(h, what, frame, want, shadow);
    let before = h.counters().unwrap();
    let action = h.tc(frame).unwrap();
    let (verdicts, _) = delta(&before, &h.counters().unwrap());
    assert_eq!(
        action,
        want.action(),
        "{what}: TC verdict (counted {verdicts:?})"
    );
    assert_eq!(verdicts, vec![(want, 1)], "{what}: reason counted by TC");
}

/// As `check_both`, but for cut frames: BPF_PROG_TEST_RUN for TC refuses frames whose IP
/// header is incomplete (net/bpf/test_run.c pulls it before running), so those only run
/// through XDP. Returns whether TC ran.
fn check_cut(h: &Harness, what: &str, frame: &[u8], want: Reason) -> bool {
    check_xdp(h, what, frame, want, &[]);
    let before = h.counters().unwrap();
    let Ok(action) = h.tc(frame) else {
        return false;
    };
    let (verdicts, _) = delta(&before, &h.counters().unwrap());
    assert_eq!(
        action,
        want.action(),
        "{what}: TC verdict (counted {verdicts:?})"
    );
    assert_eq!(verdicts, vec![(want, 1)], "{what}: reason counted by TC");
    true
}

#[test]
fn stateless_verdicts_agree_between_xdp_and_tc() {
    require_kernel!();
    let h = Harness::new(POLICY).unwrap();
    let cases: Vec<(&str, Vec<u8>, Reason, Vec<Reason>)> = vec![
        ("ARP", non_ip(0x0806, 28), Reason::NotIp, vec![]),
        ("LLDP", non_ip(0x88cc, 40), Reason::NotIp, vec![]),
        (
            "plain IPv4 UDP",
            FrameSpec::udp("203.0.113.9", 9999).build(),
            Reason::NoMatch,
            vec![],
        ),
        (
            "allow beats a wider deny",
            FrameSpec::udp("10.1.2.3", 9999).build(),
            Reason::Allowed,
            vec![],
        ),
        (
            "deny list",
            FrameSpec::udp("10.2.3.4", 9999).build(),
            Reason::Denied,
            vec![],
        ),
        (
            "shadow deny passes",
            FrameSpec::udp("192.0.2.7", 9999).build(),
            Reason::NoMatch,
            vec![Reason::Denied],
        ),
        (
            "longest prefix: /24 enforce",
            FrameSpec::udp("198.51.100.5", 1).build(),
            Reason::Denied,
            vec![],
        ),
        (
            "longest prefix: /25 shadow",
            FrameSpec::udp("198.51.100.200", 1).build(),
            Reason::NoMatch,
            vec![Reason::Denied],
        ),
        (
            "IPv6 deny",
            FrameSpec::udp("2001:db8:bad::1", 9999).build(),
            Reason::Denied,
            vec![],
        ),
        (
            "IPv6 allow",
            FrameSpec::udp("2001:db8:a::1", 9999).build(),
            Reason::Allowed,
            vec![],
        ),
        (
            "IPv6 no match",
            FrameSpec::udp("2001:db8:c::1", 9999).build(),
            Reason::NoMatch,
            vec![],
        ),
        (
            "ICMP deny",
            FrameSpec::icmp("10.9.9.9").build(),
            Reason::Denied,
            vec![],
        ),
        (
            "ICMPv6 no match",
            FrameSpec::icmp("2001:db8:c::1").build(),
            Reason::NoMatch,
            vec![],
        ),
        (
            "802.1Q deny",
            FrameSpec::udp("10.2.3.4", 1).vlans(&[ETH_P_8021Q]).build(),
            Reason::Denied,
            vec![],
        ),
        (
            "802.1ad + 802.1Q deny",
            FrameSpec::udp("10.2.3.4", 1)
                .vlans(&[ETH_P_8021AD, ETH_P_8021Q])
                .build(),
            Reason::Denied,
            vec![],
        ),
        (
            "802.1ad + 802.1Q IPv6 allow",
            FrameSpec::udp("2001:db8:a::9", 1)
                .vlans(&[ETH_P_8021AD, ETH_P_8021Q])
                .build(),
            Reason::Allowed,
            vec![],
        ),
        (
            "three VLAN tags are not parsed",
            FrameSpec::udp("10.2.3.4", 1)
                .vlans(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q])
                .build(),
            Reason::NotIp,
            vec![],
        ),
        (
            "IPv4 options honoured",
            FrameSpec {
                ipv4_options: 40,
                ..FrameSpec::udp("10.2.3.4", 1)
            }
            .build(),
            Reason::Denied,
            vec![],
        ),
        (
            "IPv4 non-first fragment of a denied source",
            FrameSpec {
                ipv4_fragment: (100, false),
                ..FrameSpec::udp("10.2.3.4", 53)
            }
            .build(),
            Reason::Denied,
            vec![],
        ),
        (
            "IPv4 non-first fragment has no port: port rule does not apply",
            FrameSpec {
                ipv4_fragment: (100, true),
                ..FrameSpec::udp("203.0.113.50", 53)
            }
            .build(),
            Reason::NoMatch,
            vec![],
        ),
        (
            "IPv6 later fragment has no port",
            FrameSpec {
                ipv6_exts: vec![Ext::Fragment {
                    offset: 10,
                    more: false,
                }],
                ..FrameSpec::udp("2001:db8:c::50", 53)
            }
            .build(),
            Reason::NoMatch,
            vec![],
        ),
        (
            "IPv6 with nine extension headers is malformed",
            FrameSpec {
                ipv6_exts: vec![Ext::DestOpts; 9],
                ..FrameSpec::udp("2001:db8:c::51", 1)
            }
            .build(),
            Reason::Malformed,
            vec![],
        ),
        (
            "malformed but allowed passes",
            FrameSpec {
                ipv6_exts: vec![Ext::DestOpts; 9],
                ..FrameSpec::udp("2001:db8:a::51", 1)
            }
            .build(),
            Reason::Allowed,
            vec![],
        ),
    ];
    for (what, frame, want, shadow) in &cases {
        check_both(&h, what, frame, *want, shadow);
    }
}

/// Entries of one address live in hash maps, wider ones in the tries: an address's own
/// entry must still be the longest match, with its own mode, and go when the policy drops it.
#[test]
fn address_entries_are_the_longest_match() {
    require_kernel!();
    let policy = "allow: [203.0.113.77/32, '2001:db8:bad::77']\n\
                  deny:\n  - 203.0.113.0/24\n  - {cidr: 203.0.113.9/32, name: one, mode: shadow}\n\
                  \x20 - 198.51.100.7/32\n  - 2001:db8:bad::/48\n  - '2001:db8:5::9'\n";
    let mut h = Harness::new(policy).unwrap();
    let udp = |src: &str| FrameSpec::udp(src, 9999).build();
    let cases = [
        (
            "allowed address in a denied /24",
            "203.0.113.77",
            Reason::Allowed,
            vec![],
        ),
        (
            "shadowed address in a denied /24",
            "203.0.113.9",
            Reason::NoMatch,
            vec![Reason::Denied],
        ),
        (
            "the /24 around them",
            "203.0.113.10",
            Reason::Denied,
            vec![],
        ),
        ("denied address", "198.51.100.7", Reason::Denied, vec![]),
        ("its neighbour", "198.51.100.8", Reason::NoMatch, vec![]),
        (
            "allowed IPv6 address in a denied /48",
            "2001:db8:bad::77",
            Reason::Allowed,
            vec![],
        ),
        (
            "the /48 around it",
            "2001:db8:bad::78",
            Reason::Denied,
            vec![],
        ),
        (
            "denied IPv6 address",
            "2001:db8:5::9",
            Reason::Denied,
            vec![],
        ),
    ];
    for (what, src, want, shadow) in &cases {
        check_both(&h, what, &udp(src), *want, shadow);
    }
    h.apply("deny: [203.0.113.0/24, 2001:db8:bad::/48]\n")
        .unwrap();
    check_both(
        &h,
        "allow entry gone",
        &udp("203.0.113.77"),
        Reason::Denied,
        &[],
    );
    check_both(
        &h,
        "deny entry gone",
        &udp("198.51.100.7"),
        Reason::NoMatch,
        &[],
    );
    check_both(
        &h,
        "IPv6 deny entry gone",
        &udp("2001:db8:5::9"),
        Reason::NoMatch,
        &[],
    );
}

#[test]
fn truncated_frames_at_every_header_boundary() {
    require_kernel!();
    let h = Harness::new(POLICY).unwrap();
    // Ethernet (14) + 802.1Q (4) + IPv4 with 8 option bytes (28) + TCP (20) + payload.
    let v4 = FrameSpec {
        ipv4_options: 8,
        ..FrameSpec::tcp("203.0.113.7", 80, false, true)
    }
    .vlans(&[ETH_P_8021Q])
    .build();
    let mut tc_ran = 0;
    for len in 14..v4.len() {
        // A cut VLAN tag or IPv4 header leaves no source to judge; a cut TCP header
        // leaves a source that is neither allowed nor denied. Both are malformed.
        let want = if len < 14 + 4 + 28 + 20 {
            Reason::Malformed
        } else {
            Reason::NoMatch
        };
        tc_ran += usize::from(check_cut(
            &h,
            &format!("IPv4/TCP cut to {len} bytes"),
            &v4[..len],
            want,
        ));
    }
    // An allowed source is never dropped, even when its transport header is cut.
    let allowed = FrameSpec::tcp("10.1.0.1", 80, true, false).build();
    check_both(
        &h,
        "allowed source, TCP cut",
        &allowed[..14 + 20 + 10],
        Reason::Allowed,
        &[],
    );
    // A denied source whose transport header is cut is dropped as denied.
    let denied = FrameSpec::udp("10.5.0.1", 53).build();
    check_both(
        &h,
        "denied source, UDP cut",
        &denied[..14 + 20 + 4],
        Reason::Denied,
        &[],
    );

    // Ethernet + IPv6 (40) + hop-by-hop (16) + fragment (8) + UDP (8) + payload.
    let v6 = FrameSpec {
        ipv6_exts: vec![
            Ext::HopByHop,
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ],
        ..FrameSpec::udp("2001:db8:c::7", 9)
    }
    .build();
    for len in 14..v6.len() {
        let want = if len < 14 + 40 + 16 + 8 + 8 {
            Reason::Malformed
        } else {
            Reason::NoMatch
        };
        tc_ran += usize::from(check_cut(
            &h,
            &format!("IPv6/UDP cut to {len} bytes"),
            &v6[..len],
            want,
        ));
    }
    // TC must have judged every cut that leaves the IP header whole: 20 TCP + 32 IPv6 cuts.
    assert!(tc_ran >= 52, "TC ran on only {tc_ran} cut frames");
    // Invalid headers: wrong IP version, IPv4 IHL below 5, TCP data offset below 5.
    let mut bad_version = FrameSpec::udp("203.0.113.7", 9).build();
    bad_version[14] = 0x55;
    check_both(
        &h,
        "IPv4 ethertype with version 5",
        &bad_version,
        Reason::Malformed,
        &[],
    );
    let mut bad_ihl = FrameSpec::udp("203.0.113.7", 9).build();
    bad_ihl[14] = 0x44;
    check_both(&h, "IPv4 IHL 4", &bad_ihl, Reason::Malformed, &[]);
    let mut bad_doff = FrameSpec::tcp("203.0.113.7", 80, true, false).build();
    bad_doff[14 + 20 + 12] = 0x40;
    check_both(&h, "TCP data offset 4", &bad_doff, Reason::Malformed, &[]);
}

/// Malformed causes that moved between two readings of the counters.
fn causes_moved(before: &Counters, after: &Counters) -> Vec<(MalformedCause, u64)> {
    MalformedCause::ALL
        .into_iter()
        .map(|cause| (cause, after.malformed(cause) - before.malformed(cause)))
        .filter(|(_, moved)| *moved > 0)
        .collect()
}

/// An IPv6 packet from an IPv4-mapped address (::ffff:a.b.c.d) is judged as the IPv4 host
/// it names: the IPv4 allow and deny lists apply, and it shares that host's bucket.
#[test]
fn ipv4_mapped_sources_are_judged_as_ipv4() {
    require_kernel!();
    let h = Harness::new(POLICY).unwrap();
    check_both(
        &h,
        "mapped source in an IPv4 deny entry",
        &FrameSpec::udp("::ffff:10.5.0.1", 9999).build(),
        Reason::Denied,
        &[],
    );
    check_both(
        &h,
        "mapped source in an IPv4 allow entry",
        &FrameSpec::udp("::ffff:10.1.0.1", 9999).build(),
        Reason::Allowed,
        &[],
    );
    // The DNS rule (burst 3) counts the IPv4 host and its mapped form as one source.
    let v4 = FrameSpec::udp("203.0.113.77", 53).build();
    let mapped = FrameSpec::udp("::ffff:203.0.113.77", 53).build();
    for (i, frame) in [&v4, &mapped, &v4].iter().enumerate() {
        check_xdp(&h, &format!("token {i}"), frame, Reason::WithinLimit, &[]);
    }
    check_xdp(
        &h,
        "the mapped form is over the same limit",
        &mapped,
        Reason::RateLimited,
        &[],
    );
}

#[test]
fn malformed_frames_are_counted_by_cause() {
    require_kernel!();
    let h = Harness::new(POLICY).unwrap();
    let v4_udp = FrameSpec::udp("203.0.113.7", 9).build();
    let v4_tcp = FrameSpec::tcp("203.0.113.7", 80, true, false).build();
    let v4_options = FrameSpec {
        ipv4_options: 8,
        ..FrameSpec::udp("203.0.113.7", 9)
    }
    .build();
    let v4_icmp = FrameSpec::icmp("203.0.113.7").build();
    let v6_udp = FrameSpec::udp("2001:db8:c::7", 9).build();
    let v6_hop = FrameSpec {
        ipv6_exts: vec![Ext::HopByHop],
        ..FrameSpec::udp("2001:db8:c::7", 9)
    }
    .build();
    let vlan = FrameSpec::udp("203.0.113.7", 9)
        .vlans(&[ETH_P_8021Q])
        .build();
    let with = |frame: &[u8], at: usize, byte: u8| {
        let mut frame = frame.to_vec();
        frame[at] = byte;
        frame
    };
    let cases: Vec<(MalformedCause, Vec<u8>)> = vec![
        (MalformedCause::TruncatedVlan, vlan[..16].to_vec()),
        (MalformedCause::TruncatedIpv4, v4_udp[..14 + 12].to_vec()),
        (MalformedCause::BadIpv4Header, with(&v4_udp, 14, 0x55)),
        (MalformedCause::BadIpv4Header, with(&v4_udp, 14, 0x44)),
        (
            MalformedCause::TruncatedIpv4Options,
            v4_options[..14 + 20 + 4].to_vec(),
        ),
        (MalformedCause::TruncatedIpv6, v6_udp[..14 + 30].to_vec()),
        (MalformedCause::BadIpv6Version, with(&v6_udp, 14, 0x45)),
        (
            MalformedCause::TruncatedExtensionHeader,
            v6_hop[..14 + 40 + 4].to_vec(),
        ),
        (
            MalformedCause::TooManyExtensionHeaders,
            FrameSpec {
                ipv6_exts: vec![Ext::DestOpts; 9],
                ..FrameSpec::udp("2001:db8:c::51", 1)
            }
            .build(),
        ),
        (
            MalformedCause::TruncatedTcp,
            v4_tcp[..14 + 20 + 10].to_vec(),
        ),
        (
            MalformedCause::BadTcpDataOffset,
            with(&v4_tcp, 14 + 20 + 12, 0x40),
        ),
        (MalformedCause::TruncatedUdp, v4_udp[..14 + 20 + 4].to_vec()),
        (
            MalformedCause::TruncatedIcmp,
            v4_icmp[..14 + 20 + 4].to_vec(),
        ),
    ];
    for (cause, frame) in &cases {
        let before = h.counters().unwrap();
        assert_eq!(
            h.xdp(frame).unwrap(),
            Action::Drop,
            "{cause:?}: XDP verdict"
        );
        let after = h.counters().unwrap();
        assert_eq!(
            causes_moved(&before, &after),
            [(*cause, 1)],
            "{cause:?}: causes counted by XDP"
        );
        // BPF_PROG_TEST_RUN refuses TC runs on frames whose IP header is cut.
        if let Ok(action) = h.tc(frame) {
            assert_eq!(action, Action::Drop, "{cause:?}: TC verdict");
            assert_eq!(
                causes_moved(&after, &h.counters().unwrap()),
                [(*cause, 1)],
                "{cause:?}: causes counted by TC"
            );
        }
    }
    // Every cause has a case above but a cut Ethernet header: BPF_PROG_TEST_RUN refuses
    // frames shorter than one.
    for cause in MalformedCause::ALL
        .into_iter()
        .filter(|cause| *cause != MalformedCause::TruncatedEthernet)
    {
        assert!(
            cases.iter().any(|(c, _)| *c == cause),
            "no case for {cause:?}"
        );
    }
}

#[test]
fn extension_headers_and_options_reach_the_transport_header() {
    require_kernel!();
    let h = Harness::new(POLICY).unwrap();
    // The dns rule (udp/53, burst 3) only applies if the port is found behind the headers.
    let chains: Vec<Vec<Ext>> = vec![
        vec![Ext::HopByHop],
        vec![Ext::HopByHop, Ext::DestOpts, Ext::Routing],
        vec![
            Ext::Auth,
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ],
        vec![Ext::DestOpts; 8],
    ];
    for (i, exts) in chains.into_iter().enumerate() {
        let src = format!("2001:db8:1:{i}::1");
        let frame = FrameSpec {
            ipv6_exts: exts.clone(),
            ..FrameSpec::udp(&src, 53)
        }
        .build();
        check_xdp(
            &h,
            &format!("{exts:?} #1"),
            &frame,
            Reason::WithinLimit,
            &[],
        );
        check_xdp(
            &h,
            &format!("{exts:?} #2"),
            &frame,
            Reason::WithinLimit,
            &[],
        );
        check_xdp(
            &h,
            &format!("{exts:?} #3"),
            &frame,
            Reason::WithinLimit,
            &[],
        );
        check_xdp(
            &h,
            &format!("{exts:?} #4"),
            &frame,
            Reason::RateLimited,
            &[],
        );
    }
    let frame = FrameSpec {
        ipv4_options: 40,
        ..FrameSpec::udp("203.0.113.60", 53)
    }
    .build();
    for _ in 0..3 {
        check_xdp(
            &h,
            "IPv4 options, within burst",
            &frame,
            Reason::WithinLimit,
            &[],
        );
    }
    check_xdp(
        &h,
        "IPv4 options, over burst",
        &frame,
        Reason::RateLimited,
        &[],
    );
}

#[test]
fn token_bucket_connections_shadow_and_grouping() {
    require_kernel!();
    let h = Harness::new(POLICY).unwrap();
    let dns = FrameSpec::udp("203.0.113.1", 53).build();
    for i in 0..3 {
        check_xdp(&h, &format!("dns #{i}"), &dns, Reason::WithinLimit, &[]);
    }
    check_xdp(&h, "dns over burst", &dns, Reason::RateLimited, &[]);
    // Another source has its own bucket.
    check_xdp(
        &h,
        "dns, other source",
        &FrameSpec::udp("203.0.113.2", 53).build(),
        Reason::WithinLimit,
        &[],
    );

    // Connections: only SYN without ACK takes a token; the range 8000-8010 shares the rule.
    let syn = FrameSpec::tcp("203.0.113.3", 443, true, false).build();
    let syn_range = FrameSpec::tcp("203.0.113.3", 8005, true, false).build();
    let ack = FrameSpec::tcp("203.0.113.3", 443, false, true).build();
    let syn_ack = FrameSpec::tcp("203.0.113.3", 443, true, true).build();
    check_xdp(&h, "SYN #1", &syn, Reason::WithinLimit, &[]);
    check_xdp(
        &h,
        "SYN #2 (port range)",
        &syn_range,
        Reason::WithinLimit,
        &[],
    );
    check_xdp(&h, "ACK does not count", &ack, Reason::NoMatch, &[]);
    check_xdp(&h, "SYN-ACK does not count", &syn_ack, Reason::NoMatch, &[]);
    check_xdp(&h, "SYN #3 over the limit", &syn, Reason::RateLimited, &[]);

    // Shadow rule: over the limit passes and is counted as a shadow hit.
    let web = FrameSpec::tcp("203.0.113.4", 8080, false, true).build();
    check_xdp(&h, "shadow rule, within", &web, Reason::WithinLimit, &[]);
    check_xdp(
        &h,
        "shadow rule, over",
        &web,
        Reason::WithinLimit,
        &[Reason::RateLimited],
    );

    // IPv6 sources are grouped by /64 by default: two addresses share one bucket.
    let a = FrameSpec::udp("2001:db8:5:5::1", 5353).build();
    let b = FrameSpec::udp("2001:db8:5:5::2", 5353).build();
    let c = FrameSpec::udp("2001:db8:5:6::1", 5353).build();
    check_xdp(&h, "/64 group, first address", &a, Reason::WithinLimit, &[]);
    check_xdp(
        &h,
        "/64 group, second address",
        &b,
        Reason::WithinLimit,
        &[],
    );
    check_xdp(
        &h,
        "/64 group exhausted by rotation",
        &b,
        Reason::RateLimited,
        &[],
    );
    check_xdp(&h, "another /64", &c, Reason::WithinLimit, &[]);

    // prefix_v4: 24 groups a whole /24.
    let x = FrameSpec::udp("203.0.113.10", 514).build();
    let y = FrameSpec::udp("203.0.113.11", 514).build();
    check_xdp(&h, "/24 group #1", &x, Reason::WithinLimit, &[]);
    check_xdp(&h, "/24 group #2", &y, Reason::WithinLimit, &[]);
    check_xdp(&h, "/24 group exhausted", &x, Reason::RateLimited, &[]);
}

#[test]
fn escalation_bans_the_source_for_everything() {
    require_kernel!();
    let h = Harness::new(POLICY).unwrap();
    let syn = FrameSpec::tcp("203.0.113.20", 443, true, false).build();
    check_xdp(&h, "SYN #1", &syn, Reason::WithinLimit, &[]);
    check_xdp(&h, "SYN #2", &syn, Reason::WithinLimit, &[]);
    for i in 0..3 {
        check_xdp(
            &h,
            &format!("over the limit #{i}"),
            &syn,
            Reason::RateLimited,
            &[],
        );
    }
    // Banned now: any traffic from the source, not only the rule's.
    check_xdp(
        &h,
        "banned: UDP",
        &FrameSpec::udp("203.0.113.20", 9999).build(),
        Reason::Banned,
        &[],
    );
    check_xdp(&h, "banned: SYN", &syn, Reason::Banned, &[]);
    check_xdp(
        &h,
        "neighbour not banned",
        &FrameSpec::udp("203.0.113.21", 9999).build(),
        Reason::NoMatch,
        &[],
    );
}

/// A rule whose bans are rolled out in shadow mode, as the README advises for a new `ban:`.
const SHADOW_BANS: &str = "rate_limits:\n  - {name: probe, protocol: udp, ports: [7], rate: 1/h, burst: 1, mode: shadow, ban: {after: 1, within: 1h, for: 1h}}\n";

#[test]
fn operator_blocks_win_over_escalation_bans() {
    require_kernel!();
    let mut h = Harness::new(SHADOW_BANS).unwrap();
    let probe = FrameSpec::udp("203.0.113.9", 7).build();
    check_xdp(&h, "within the burst", &probe, Reason::WithinLimit, &[]);
    // Over the limit: a shadow ban of 203.0.113.9/32 starts; nothing is dropped.
    check_xdp(
        &h,
        "over, shadow",
        &probe,
        Reason::WithinLimit,
        &[Reason::RateLimited],
    );
    check_xdp(
        &h,
        "shadow-banned",
        &probe,
        Reason::WithinLimit,
        &[Reason::Banned, Reason::RateLimited],
    );
    // A wider block of the same source is not hidden by the longer shadow ban.
    let net = |cidr: &str| cidr.parse::<ipnet::IpNet>().unwrap();
    h.bans.block(net("203.0.113.0/24"), u64::MAX).unwrap();
    check_xdp(
        &h,
        "blocked /24 over a shadow /32 ban",
        &probe,
        Reason::Banned,
        &[],
    );
    // A block of exactly the banned prefix is taken, not refused because of the ban.
    h.bans.block(net("203.0.113.9/32"), u64::MAX).unwrap();
    h.bans.unban(net("203.0.113.0/24")).unwrap();
    check_xdp(&h, "blocked /32", &probe, Reason::Banned, &[]);
    let bans = h.telemetry.bans().unwrap();
    assert_eq!(
        bans.len(),
        2,
        "the block and the shadow ban, side by side: {bans:?}"
    );
}

#[test]
fn a_void_ban_never_removes_a_block() {
    require_kernel!();
    let policy = "rate_limits:\n  - {name: probe, protocol: udp, ports: [7], rate: 1/h, burst: 1, ban: {after: 1, within: 1h, for: 1h}}\n";
    let mut h = Harness::new(policy).unwrap();
    let banned = FrameSpec::udp("203.0.113.9", 7).build();
    check_xdp(&h, "within the burst", &banned, Reason::WithinLimit, &[]);
    check_xdp(&h, "over: banned", &banned, Reason::RateLimited, &[]);
    check_xdp(&h, "banned", &banned, Reason::Banned, &[]);
    // An emergency block of everything, then the rule that made the ban goes away.
    h.bans
        .block("0.0.0.0/0".parse().unwrap(), u64::MAX)
        .unwrap();
    h.apply("").unwrap();
    // The ban is void now; meeting it must not remove anything but itself (it used to
    // remove the key its gone rule's all-zero prefix named: 0.0.0.0/0, the block).
    for _ in 0..3 {
        check_xdp(&h, "void ban, block stands", &banned, Reason::Banned, &[]);
    }
    let other = FrameSpec::udp("198.18.0.1", 9).build();
    check_xdp(
        &h,
        "the block still stands for everyone",
        &other,
        Reason::Banned,
        &[],
    );
    // The sweep removes the void ban by its exact key and leaves the block.
    let rules = h.enforcer.rules_in_force();
    let swept = h
        .bans
        .sweep(0, |rule, epoch| rules.ban_is_current(rule, epoch))
        .unwrap();
    assert_eq!((swept.bans, swept.blocks.len()), (1, 0), "{swept:?}");
    let left = h.telemetry.bans().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].net.to_string(), "0.0.0.0/0");
}

/// Every TCP and UDP port has an entry in the port table (`PORT_RULES_*`): its own rules,
/// else its class's. Applies that add, change and remove both kinds, landing in each of the
/// two policy sets in turn, must leave every port with the right ones.
#[test]
fn ports_follow_their_own_rules_or_their_class_across_applies() {
    require_kernel!();
    // Burst 1: a fresh source's first packet passes, its second is over the limit. The
    // port rule is in shadow mode, so which rule judged the second packet shows.
    let class_tcp = "  - {name: class, protocol: tcp, rate: 1/h, burst: 1}\n";
    let class_udp = "  - {name: class, protocol: udp, rate: 1/h, burst: 1}\n";
    let web = "  - {name: web, protocol: tcp, ports: [8080], rate: 1/h, burst: 1, mode: shadow}\n";
    let mut h = Harness::new(&format!("rate_limits:\n{class_tcp}{web}")).unwrap();
    let mut sources = (1..=250u8).map(|n| format!("203.0.113.{n}"));
    // The second packet's verdict from a fresh source, after its first passed.
    let mut expect =
        |h: &Harness, what: &str, tcp: bool, port: u16, want: Reason, shadow: &[Reason]| {
            let src = sources.next().unwrap();
            let frame = if tcp {
                FrameSpec::tcp(&src, port, false, true).build()
            } else {
                FrameSpec::udp(&src, port).build()
            };
            let first = if want == Reason::NoMatch && shadow.is_empty() {
                Reason::NoMatch
            } else {
                Reason::WithinLimit
            };
            check_xdp(h, &format!("{what}, first packet"), &frame, first, &[]);
            check_xdp(h, what, &frame, want, shadow);
        };
    let limited = Reason::RateLimited;
    expect(
        &h,
        "A: the port's own rule",
        true,
        8080,
        Reason::WithinLimit,
        &[limited],
    );
    expect(&h, "A: TCP port without a rule", true, 9, limited, &[]);
    expect(&h, "A: the highest TCP port", true, 65535, limited, &[]);
    expect(&h, "A: UDP, no rule", false, 9, Reason::NoMatch, &[]);
    // B: the port rule gone, the class rule moved to UDP.
    h.apply(&format!("rate_limits:\n{class_udp}")).unwrap();
    expect(
        &h,
        "B: the port rule's port",
        true,
        8080,
        Reason::NoMatch,
        &[],
    );
    expect(
        &h,
        "B: TCP port without a rule",
        true,
        9,
        Reason::NoMatch,
        &[],
    );
    expect(&h, "B: UDP port", false, 8080, limited, &[]);
    expect(&h, "B: the highest UDP port", false, 65535, limited, &[]);
    // C: the port rule gone, the class's rules as in A, over the set A is in.
    h.apply(&format!("rate_limits:\n{class_tcp}")).unwrap();
    expect(&h, "C: the port rule's port", true, 8080, limited, &[]);
    expect(&h, "C: TCP port without a rule", true, 9, limited, &[]);
    // D: the port rule back and no class rule, over B.
    h.apply(&format!("rate_limits:\n{web}")).unwrap();
    expect(
        &h,
        "D: the port's own rule",
        true,
        8080,
        Reason::WithinLimit,
        &[limited],
    );
    expect(
        &h,
        "D: TCP port without a rule",
        true,
        9,
        Reason::NoMatch,
        &[],
    );
    expect(&h, "D: UDP port", false, 65535, Reason::NoMatch, &[]);
    // E: nothing, over C.
    h.apply("allow: []\n").unwrap();
    expect(
        &h,
        "E: the port rule's port",
        true,
        8080,
        Reason::NoMatch,
        &[],
    );
    expect(&h, "E: TCP port", true, 65535, Reason::NoMatch, &[]);
}

/// The kernel skips the block, decision and ban tries while the agent has marked them
/// empty (`EMPTY_TRIES`). Each way an entry arrives after a mark was set must clear it: a
/// block, a detector's decision on a prefix, a ban the kernel makes itself.
#[test]
fn entries_are_enforced_after_their_maps_were_marked_empty() {
    require_kernel!();
    let policy = "rate_limits:\n  - {name: probe, protocol: udp, ports: [7], rate: 1/h, burst: 1, ban: {after: 1, within: 1h, for: 1h}}\n";
    let mut h = Harness::new(policy).unwrap();
    let net = |cidr: &str| cidr.parse::<ipnet::IpNet>().unwrap();
    let other_port = FrameSpec::udp("203.0.113.9", 9).build();
    check_xdp(&h, "nothing held", &other_port, Reason::NoMatch, &[]);
    // Blocks: each block after the maps were found empty again (`unban`) is seen.
    for round in ["first", "second"] {
        h.bans.block(net("203.0.113.0/24"), u64::MAX).unwrap();
        check_xdp(
            &h,
            &format!("{round} block"),
            &other_port,
            Reason::Banned,
            &[],
        );
        assert!(h.bans.unban(net("203.0.113.0/24")).unwrap());
        check_xdp(
            &h,
            &format!("{round} unblocked"),
            &other_port,
            Reason::NoMatch,
            &[],
        );
    }
    // Decisions on a prefix, the same.
    let decision = DecisionEntry::new(u64::MAX, Origin::Cscli);
    for round in ["first", "second"] {
        h.decisions.set(net("203.0.113.0/24"), decision).unwrap();
        check_xdp(
            &h,
            &format!("{round} decision"),
            &other_port,
            Reason::Decision,
            &[],
        );
        assert!(h.decisions.remove(net("203.0.113.0/24")).unwrap());
        h.decisions.refresh_marks().unwrap();
        check_xdp(
            &h,
            &format!("{round} decision lifted"),
            &other_port,
            Reason::NoMatch,
            &[],
        );
    }
    // Bans the kernel makes: the sweep marks the ban maps empty once the ban has gone, and
    // the next ban is seen all the same.
    let probe = |src: &str| FrameSpec::udp(src, 7).build();
    let rules = h.enforcer.rules_in_force();
    for (round, source) in [("first", "203.0.113.9"), ("second", "203.0.113.10")] {
        check_xdp(
            &h,
            &format!("{round} within"),
            &probe(source),
            Reason::WithinLimit,
            &[],
        );
        check_xdp(
            &h,
            &format!("{round} over"),
            &probe(source),
            Reason::RateLimited,
            &[],
        );
        let banned = FrameSpec::udp(source, 9).build();
        check_xdp(&h, &format!("{round} banned"), &banned, Reason::Banned, &[]);
        // A sweep while the ban lasts leaves it seen.
        h.bans
            .sweep(0, |rule, epoch| rules.ban_is_current(rule, epoch))
            .unwrap();
        check_xdp(
            &h,
            &format!("{round} still banned"),
            &banned,
            Reason::Banned,
            &[],
        );
        // A sweep after its end removes it and marks the maps empty.
        let swept = h
            .bans
            .sweep(u64::MAX, |rule, epoch| rules.ban_is_current(rule, epoch))
            .unwrap();
        assert_eq!(swept.bans, 1, "{round}: {swept:?}");
        check_xdp(
            &h,
            &format!("{round} ban swept"),
            &banned,
            Reason::NoMatch,
            &[],
        );
    }
}

#[test]
fn bucket_refills_and_ban_expires_over_time() {
    require_kernel!();
    let h = Harness::new(
        r#"
rate_limits:
  - name: fast
    protocol: udp
    ports: [7000]
    rate: 10/s
    burst: 1
    ban: { after: 2, within: 10s, for: 1s }
"#,
    )
    .unwrap();
    let frame = FrameSpec::udp("203.0.113.30", 7000).build();
    check_xdp(&h, "first packet", &frame, Reason::WithinLimit, &[]);
    check_xdp(
        &h,
        "second packet at once",
        &frame,
        Reason::RateLimited,
        &[],
    );
    std::thread::sleep(Duration::from_millis(250));
    check_xdp(&h, "after a refill", &frame, Reason::WithinLimit, &[]);
    // The second over-limit packet within the 10 s window starts the ban.
    check_xdp(&h, "over again: ban", &frame, Reason::RateLimited, &[]);
    check_xdp(&h, "banned", &frame, Reason::Banned, &[]);
    std::thread::sleep(Duration::from_millis(1300));
    check_xdp(&h, "ban expired", &frame, Reason::WithinLimit, &[]);
}

/// A rule with no room in its burst reads the precise clock, and skips the read only for a
/// bucket more than two ticks from having room: a packet that comes as its token does,
/// within a tick of it, passes.
#[test]
fn a_tight_bucket_passes_the_packet_that_comes_as_its_token_does() {
    require_kernel!();
    let h = Harness::new(
        "rate_limits:\n  - {name: tight, protocol: udp, ports: [7001], rate: 10/s, burst: 1}\n",
    )
    .unwrap();
    let frame = FrameSpec::udp("203.0.113.31", 7001).build();
    check_xdp(&h, "first packet", &frame, Reason::WithinLimit, &[]);
    check_xdp(&h, "second at once", &frame, Reason::RateLimited, &[]);
    // The token is back 100 ms after the first packet; the coarse clock may still be up
    // to a tick (4 ms at 250 Hz) behind then.
    std::thread::sleep(Duration::from_millis(101));
    check_xdp(&h, "as the token is back", &frame, Reason::WithinLimit, &[]);
    check_xdp(&h, "and again at once", &frame, Reason::RateLimited, &[]);
}

#[test]
fn reapply_keeps_unchanged_rules_and_resets_changed_ones() {
    require_kernel!();
    let policy = |burst: u32, mode: &str| {
        format!(
            "rate_limits:\n  - {{name: dns, protocol: udp, ports: [53], rate: 1/h, burst: {burst}, mode: {mode}}}\n"
        )
    };
    let mut h = Harness::new(&policy(1, "enforce")).unwrap();
    let frame = FrameSpec::udp("203.0.113.40", 53).build();
    check_xdp(&h, "first", &frame, Reason::WithinLimit, &[]);
    check_xdp(&h, "limited", &frame, Reason::RateLimited, &[]);
    h.apply(&policy(1, "shadow")).unwrap();
    check_xdp(
        &h,
        "mode switch keeps the bucket",
        &frame,
        Reason::WithinLimit,
        &[Reason::RateLimited],
    );
    h.apply(&policy(1, "enforce")).unwrap();
    check_xdp(
        &h,
        "unchanged rule keeps the bucket",
        &frame,
        Reason::RateLimited,
        &[],
    );
    h.apply(&policy(2, "enforce")).unwrap();
    check_xdp(
        &h,
        "changed rule starts fresh",
        &frame,
        Reason::WithinLimit,
        &[],
    );
    h.apply("deny: [203.0.113.40]\n").unwrap();
    check_xdp(&h, "rule removed, deny added", &frame, Reason::Denied, &[]);
    h.apply("{}\n").unwrap();
    check_xdp(&h, "empty policy", &frame, Reason::NoMatch, &[]);
}

#[test]
fn events_are_budgeted_and_the_rest_counted() {
    require_kernel!();
    let h = Harness::new("deny: [10.0.0.0/8]\nevents: {per_second: 4}\n").unwrap();
    let frame = FrameSpec::udp("10.0.0.1", 1).build();
    let sent = 1000;
    for _ in 0..sent {
        assert_eq!(h.xdp(&frame).unwrap(), Action::Drop);
    }
    let c = h.counters().unwrap();
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    let per_cpu = 4u64.div_ceil(cpus);
    assert_eq!(c.verdict(Reason::Denied), sent);
    assert_eq!(
        c.events_written + c.events_suppressed + c.events_lost,
        sent,
        "{c:?}"
    );
    assert!(
        c.events_written >= 1 && c.events_written <= per_cpu * cpus,
        "{c:?}"
    );
    assert!(c.events_suppressed >= sent - per_cpu * cpus, "{c:?}");
}

/// Applies two policies back and forth while frames flow, and checks every verdict against
/// both. The policies are built so that a packet judged partly by one and partly by the
/// other is dropped, while each alone passes it: the allow entry of A hides A's deny, and the
/// rule `r` moves from port 53 (huge burst) to port 54 (burst 1) between A and B.
#[test]
fn applies_are_atomic_per_packet() {
    require_kernel!();
    const A: &str = "allow: [10.1.0.0/16]\ndeny: [10.0.0.0/8]\nrate_limits:\n  - {name: r, protocol: udp, ports: [53], rate: 1/h, burst: 1000000}\n";
    const B: &str =
        "rate_limits:\n  - {name: r, protocol: udp, ports: [54], rate: 1/h, burst: 1}\n";
    let Harness {
        programs,
        mut enforcer,
        ..
    } = Harness::new(A).unwrap();
    let frames = [
        FrameSpec::udp("10.1.2.3", 9999).build(),
        FrameSpec::udp("203.0.113.5", 53).build(),
    ];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (applies, judged) = std::thread::scope(|scope| {
        let applier = scope.spawn(|| {
            let mut applies = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let next = if applies.is_multiple_of(2) { B } else { A };
                let policy =
                    portcullis::policy::parse(std::path::Path::new("p.yaml"), next).unwrap();
                enforcer.apply(policy).unwrap();
                applies += 1;
            }
            applies
        });
        let mut judged = 0u64;
        let mut mixed = Vec::new();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(4) && mixed.is_empty() {
            for (which, frame) in frames.iter().enumerate() {
                if programs.xdp(frame).unwrap() != Action::Pass {
                    mixed.push((judged, which));
                }
                judged += 1;
            }
        }
        // Stop the applier before asserting, or a failure would leave it spinning.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let applies = applier.join().unwrap();
        assert!(
            mixed.is_empty(),
            "dropped by a mix of two policies (frame number, which frame): {mixed:?}, {applies} applies"
        );
        (applies, judged)
    });
    println!("{judged} frames judged during {applies} applies, none by a mix");
    assert!(applies > 100, "only {applies} applies in 4 s");
}

/// One IPv6 /48 sprays its /64 groups at a banning rule: after `aggregate.after` bans the
/// next is of the whole /48, and once the sweep removes the bans it covers, one /48 ban is
/// all the map holds. The same for IPv4 /32 groups in a /24.
#[test]
fn bans_sprayed_over_one_network_end_as_one_wider_ban() {
    require_kernel!();
    let policy = "rate_limits:\n  - {name: probe, protocol: udp, ports: [7], rate: 1/h, burst: 1, \
                  ban: {after: 1, within: 1h, for: 1h, aggregate: {after: 4}}}\n";
    let mut h = Harness::new(policy).unwrap();
    for (family, sources, wide) in [
        (
            "IPv6",
            (0..200)
                .map(|i| format!("2001:db8:77:{i:x}::1"))
                .collect::<Vec<_>>(),
            "2001:db8:77::/48",
        ),
        (
            "IPv4",
            (1..200).map(|i| format!("198.18.5.{i}")).collect(),
            "198.18.5.0/24",
        ),
    ] {
        let mut banned_groups = 0;
        for source in &sources {
            let frame = FrameSpec::udp(source, 7).build();
            // The first packet of a group passes; a second, if the group is not banned by
            // then, is over the burst and bans.
            if h.xdp(&frame).unwrap() == Action::Pass && h.xdp(&frame).unwrap() == Action::Drop {
                banned_groups += 1;
            }
            check_xdp(
                &h,
                &format!("{family} {source}"),
                &frame,
                Reason::Banned,
                &[],
            );
        }
        let of_family = |bans: Vec<portcullis::maps::Ban>| -> Vec<String> {
            bans.iter()
                .map(|ban| ban.net.to_string())
                .filter(|net| net.contains(if family == "IPv6" { ':' } else { '.' }))
                .collect()
        };
        let bans = of_family(h.telemetry.bans().unwrap());
        assert!(bans.len() <= 5, "{family}: {} bans: {bans:?}", bans.len());
        assert_eq!(
            banned_groups, 5,
            "{family}: 4 narrow bans, then the wide one"
        );
        let epochs = h.enforcer.rules_in_force().epochs;
        let swept = h
            .bans
            .sweep(portcullis::maps::monotonic_now_ns(), |rule, epoch| {
                epochs.get(&rule) == Some(&epoch)
            })
            .unwrap();
        assert_eq!(swept.covered, 4, "{family}: {swept:?}");
        let nets = of_family(h.telemetry.bans().unwrap());
        assert_eq!(nets, vec![wide.to_string()], "{family}");
    }
}

/// Escalation can fill its ban map; operator blocks have maps of their own and still apply.
#[test]
fn blocks_apply_with_the_ban_map_full() {
    require_kernel!();
    let policy = "rate_limits:\n  - {name: probe, protocol: udp, ports: [7], rate: 1/h, burst: 1, \
                  ban: {after: 1, within: 1h, for: 1h, aggregate: {after: 0}}}\n\
                  capacity: {bans: 8}\n";
    let mut h = Harness::new(policy).unwrap();
    let frame = |i: u32| FrameSpec::udp(&format!("198.18.{i}.1"), 7).build();
    for i in 0..12 {
        h.xdp(&frame(i)).unwrap();
        h.xdp(&frame(i)).unwrap();
    }
    let counters = h.counters().unwrap();
    assert_eq!(counters.bans_failed, 4, "8 bans fit, 4 did not");
    // Source 11 was not banned (the map was full); a block takes it all the same.
    check_xdp(&h, "unbanned", &frame(11), Reason::RateLimited, &[]);
    h.bans
        .block("198.18.11.0/24".parse().unwrap(), u64::MAX)
        .unwrap();
    check_xdp(&h, "blocked", &frame(11), Reason::Banned, &[]);
}

const HTTP_ROUTES: &str = r#"
http:
  ports: [80]
  routes:
    - {name: login, methods: [POST], path: /api/login, rate: 1/h, burst: 1, mode: shadow}
    - {name: hidden, path: /admin, deny: true, mode: shadow}
"#;

/// A TCP segment from 203.0.113.50 to port `port` carrying `payload`.
/// The server's initial sequence number in the handshakes below.
const SERVER_ISN: u32 = 7000;

/// `client`'s segment, on a connection the server accepted (its SYN-ACK through TC
/// egress) and that the client completed: its request charges its own bucket.
fn accepted(h: &Harness, client: FrameSpec) -> FrameSpec {
    h.egress(&client.syn_ack(SERVER_ISN)).unwrap();
    client.acking(SERVER_ISN)
}

fn http_segment(port: u16, payload: &str) -> Vec<u8> {
    FrameSpec::tcp("203.0.113.50", port, false, true)
        .content(payload.as_bytes())
        .build()
}

/// Request starts on an HTTP port are judged by their route, in XDP and TC alike; in
/// shadow mode a refusal is counted and reported and the request passes. Segments that
/// start no request, requests no route matches and other ports are not routes' business.
#[test]
fn http_requests_are_judged_by_their_route() {
    require_kernel!();
    let h = Harness::new(HTTP_ROUTES).unwrap();
    let login = accepted(
        &h,
        FrameSpec::tcp("203.0.113.50", 80, false, true)
            .content(b"POST /api/login HTTP/1.1\r\nHost: shop\r\n\r\nuser=a"),
    )
    .build();
    check_xdp(&h, "login, first", &login, Reason::WithinLimit, &[]);
    // The same segment again is its retransmission: no second token, no shadow hit.
    check_xdp(&h, "login, retransmitted", &login, Reason::WithinLimit, &[]);
    // The next request on the connection, in shadow mode as for rate limits: counted as a
    // shadow hit, passed within a limit.
    let mut next = FrameSpec::tcp("203.0.113.50", 80, false, true)
        .content(b"POST /api/login HTTP/1.1\r\nHost: shop\r\n\r\nuser=b");
    next.seq = 1000;
    check_xdp(
        &h,
        "login, over its rate",
        &next.build(),
        Reason::WithinLimit,
        &[Reason::RouteLimited],
    );
    let cases = [
        (
            "admin, denied in shadow",
            http_segment(80, "GET /admin/users HTTP/1.1\r\n\r\n"),
            Reason::NoMatch,
            &[Reason::RouteDenied][..],
        ),
        (
            "admin with a query",
            http_segment(80, "HEAD /admin?x=1 HTTP/1.1\r\n\r\n"),
            Reason::NoMatch,
            &[Reason::RouteDenied][..],
        ),
        (
            "not a path-segment match",
            http_segment(80, "GET /administrator HTTP/1.1\r\n\r\n"),
            Reason::NoMatch,
            &[][..],
        ),
        (
            "login with another method",
            http_segment(80, "GET /api/login HTTP/1.1\r\n\r\n"),
            Reason::NoMatch,
            &[][..],
        ),
        (
            "IPv6, admin",
            FrameSpec::tcp("2001:db8:77::5", 80, false, true)
                .content(b"GET /admin HTTP/1.1\r\n\r\n")
                .build(),
            Reason::NoMatch,
            &[Reason::RouteDenied][..],
        ),
        (
            "a body segment",
            http_segment(80, "user=a&password=b"),
            Reason::NoMatch,
            &[][..],
        ),
        (
            "lowercase method",
            http_segment(80, "get /admin HTTP/1.1\r\n\r\n"),
            Reason::NoMatch,
            &[][..],
        ),
        (
            "another port",
            http_segment(8080, "GET /admin HTTP/1.1\r\n\r\n"),
            Reason::NoMatch,
            &[][..],
        ),
        (
            "a bare ACK",
            FrameSpec::tcp("203.0.113.50", 80, false, true)
                .content(b"")
                .build(),
            Reason::NoMatch,
            &[][..],
        ),
        (
            // `strict` (the default) refuses it: the path's end is not seen.
            "a target cut by the end of the segment",
            http_segment(80, "DELETE /admin"),
            Reason::HttpEvasion,
            &[][..],
        ),
    ];
    for (what, frame, reason, shadow) in cases {
        check_both(&h, what, &frame, reason, shadow);
    }
    let counters = h.counters().unwrap();
    assert_eq!(
        counters.shadowed(Reason::RouteDenied),
        6,
        "XDP and TC, three times each"
    );
}

/// A refused request is rewritten into a bare RST with the request's sequence number (or,
/// for a retransmission on a connection already reset, `rst` false, a bare ACK), in XDP and
/// TC, IPv4 and IPv6 alike: no payload, no options, lengths and checksums right.
fn assert_is_reset_of(what: &str, out: &[u8], request: &[u8], rst: bool) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let sent = SlicedPacket::from_ethernet(request).unwrap();
    let got = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let (Some(TransportSlice::Tcp(sent_tcp)), Some(TransportSlice::Tcp(tcp))) =
        (&sent.transport, &got.transport)
    else {
        panic!("{what}: not TCP");
    };
    assert!(
        tcp.rst() == rst && tcp.ack() && !tcp.syn() && !tcp.fin() && !tcp.psh(),
        "{what}: flags"
    );
    assert_eq!(
        tcp.sequence_number(),
        sent_tcp.sequence_number(),
        "{what}: seq"
    );
    assert_eq!(
        (tcp.source_port(), tcp.destination_port()),
        (sent_tcp.source_port(), sent_tcp.destination_port()),
        "{what}: ports"
    );
    assert!(tcp.payload().is_empty(), "{what}: payload left");
    assert_eq!(tcp.slice().len(), 20, "{what}: options left");
    let checksum = match &got.net {
        Some(NetSlice::Ipv4(ip)) => {
            assert_eq!(
                ip.header().total_len() as usize,
                ip.header().slice().len() + 20,
                "{what}: IPv4 total length"
            );
            let header = ip.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "{what}: IPv4 header checksum"
            );
            tcp.to_header().calc_checksum_ipv4(&header, &[]).unwrap()
        }
        Some(NetSlice::Ipv6(ip)) => {
            assert_eq!(
                ip.header().payload_length(),
                20,
                "{what}: IPv6 payload length"
            );
            tcp.to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), &[])
                .unwrap()
        }
        _ => panic!("{what}: not IP"),
    };
    assert_eq!(tcp.checksum(), checksum, "{what}: TCP checksum");
}

#[test]
fn refused_requests_reset_their_connection() {
    require_kernel!();
    let policy = "http:\n  ports: [80]\n  routes:\n    - {name: login, methods: [POST], path: /api/login, rate: 1/h, burst: 1}\n    - {name: hidden, path: /admin, deny: true}\n";
    let h = Harness::new(policy).unwrap();
    for (n, src) in ["203.0.113.60", "2001:db8:77::60"].into_iter().enumerate() {
        // Each hook's requests on a connection of their own (a source port each).
        let request = |text: &str, sport: u16| {
            let mut spec = FrameSpec::tcp(src, 80, false, true).content(text.as_bytes());
            spec.sport = sport;
            accepted(&h, spec).build()
        };
        let admin_text = "GET /admin HTTP/1.1\r\nHost: shop\r\nCookie: x\r\n\r\n";
        for (hook, run, sport) in [
            (
                "xdp",
                Harness::xdp_out as fn(&Harness, &[u8]) -> _,
                41000 + n as u16,
            ),
            ("tc", Harness::tc_out, 42000 + n as u16),
        ] {
            let admin = request(admin_text, sport);
            let what = format!("{src} {hook}: /admin");
            let (action, out) = run(&h, &admin).unwrap();
            assert_eq!(action, Action::Reset, "{what}");
            assert_is_reset_of(&what, &out, &admin, true);
            // Its retransmission goes on as a bare ACK, for the server's RST.
            let (action, out) = run(&h, &admin).unwrap();
            assert_eq!(action, Action::Reset, "{what}, again");
            assert_is_reset_of(&format!("{what}, again"), &out, &admin, false);
        }
        let login = request(
            "POST /api/login HTTP/1.1\r\nHost: shop\r\n\r\nuser=a&password=b",
            43000 + n as u16,
        );
        check_xdp(
            &h,
            &format!("{src}: login"),
            &login,
            Reason::WithinLimit,
            &[],
        );
        // The next request on the same connection: its sequence number is further on.
        let mut next = login.clone();
        let seq = next.len()
            - "POST /api/login HTTP/1.1\r\nHost: shop\r\n\r\nuser=a&password=b".len()
            - 16;
        next[seq..seq + 4].copy_from_slice(&1000u32.to_be_bytes());
        let (action, out) = h.xdp_out(&next).unwrap();
        assert_eq!(action, Action::Reset, "{src}: login over its rate");
        assert_is_reset_of(&format!("{src}: login over its rate"), &out, &next, true);
    }
    let counters = h.counters().unwrap();
    assert_eq!(counters.verdict(Reason::RouteDenied), 8);
    assert_eq!(counters.verdict(Reason::RouteLimited), 2);
}

const RESPONSE_RULES: &str = "http:\n  ports: [80]\n  responses:\n    - {name: auth-failures, status: [401, 403], ban: {after: 3, within: 1m, for: 15m}}\n    - {name: scanners, status: [404], ban: {after: 2, within: 1m, for: 1h}, mode: shadow}\n";

/// A response from port `sport` of the server to port 40000 of `client`, starting with
/// `payload`.
fn response(sport: u16, client: &str, payload: &str) -> Vec<u8> {
    response_to(sport, client, 40000, payload)
}

fn response_to(sport: u16, client: &str, cport: u16, payload: &str) -> Vec<u8> {
    FrameSpec::reply(server_of(client), sport, client, cport)
        .content(payload.as_bytes())
        .build()
}

fn server_of(client: &str) -> &'static str {
    if client.contains(':') {
        "fd00::2"
    } else {
        "10.0.0.2"
    }
}

/// The server's responses leaving through TC egress count toward the response rules of
/// their status, per client; the response that completes `after` bans the client in the
/// kernel, so XDP refuses its next packet: a request is reset, other packets dropped. What
/// is not a status line from an HTTP port counts nothing, nor does a status line on a
/// connection whose SYN-ACK the server did not send; a shadow rule's ban only counts.
#[test]
fn responses_ban_the_client_in_the_kernel() {
    require_kernel!();
    let h = Harness::new(RESPONSE_RULES).unwrap();
    for (client, neighbour) in [
        ("198.51.100.7", "198.51.100.8"),
        // IPv6 clients are grouped by /64 unless the rule says otherwise.
        ("2001:db8:5::7", "2001:db8:6::8"),
    ] {
        let request = FrameSpec::tcp(client, 80, false, true)
            .content(b"POST /login HTTP/1.1\r\nHost: shop\r\n\r\nuser=a&password=b")
            .build();
        // The server accepts the client's connection (port 40000), and the neighbour's.
        for source in [client, neighbour] {
            let request = FrameSpec::tcp(source, 80, false, true);
            h.egress(&request.syn_ack(SERVER_ISN)).unwrap();
        }
        // A local process bound to port 80 that connected to the client (port 40001: its
        // SYN left, no SYN-ACK) writes 401s: no response of the server's.
        for _ in 0..3 {
            let forged = response_to(80, client, 40001, "HTTP/1.1 401 Unauthorized\r\n\r\n");
            h.egress(&forged).unwrap();
        }
        let not_counted = [
            (80, "HTTP/1.1 200 OK\r\n\r\n"),
            (8080, "HTTP/1.1 401 Unauthorized\r\n\r\n"),
            (80, "HTTP/1.1 4x1 Unauthorized\r\n\r\n"),
            (80, "HTTP/2.0 401 Unauthorized\r\n\r\n"),
            (80, "body text with HTTP/1.1 401 inside it"),
            (80, "HTTP/1.1 40"),
        ];
        for (port, payload) in not_counted {
            for _ in 0..3 {
                h.egress(&response(port, client, payload)).unwrap();
            }
        }
        check_xdp(
            &h,
            &format!("{client}: no 401 counted yet"),
            &request,
            Reason::NoMatch,
            &[],
        );
        h.egress(&response(80, client, "HTTP/1.1 401 Unauthorized\r\n\r\n"))
            .unwrap();
        h.egress(&response(80, client, "HTTP/1.0 403 Forbidden\r\n\r\n"))
            .unwrap();
        check_xdp(
            &h,
            &format!("{client}: two of three"),
            &request,
            Reason::NoMatch,
            &[],
        );
        h.egress(&response(80, client, "HTTP/1.1 401 Unauthorized\r\n\r\n"))
            .unwrap();
        // Banned: its request is reset, its new connections dropped, in XDP and TC alike.
        for (hook, run) in [
            ("xdp", Harness::xdp_out as fn(&Harness, &[u8]) -> _),
            ("tc", Harness::tc_out),
        ] {
            let what = format!("{client} {hook}: banned request");
            let (action, out) = run(&h, &request).unwrap();
            assert_eq!(action, Action::Reset, "{what}");
            assert_is_reset_of(&what, &out, &request, hook == "xdp");
        }
        let syn = FrameSpec::tcp(client, 80, true, false).build();
        check_both(
            &h,
            &format!("{client}: banned SYN"),
            &syn,
            Reason::Banned,
            &[],
        );
        let neighbour_syn = FrameSpec::tcp(neighbour, 80, true, false).build();
        check_both(
            &h,
            &format!("{neighbour}: untouched"),
            &neighbour_syn,
            Reason::NoMatch,
            &[],
        );
        // The shadow rule bans the neighbour in shadow only: counted, not refused.
        for _ in 0..2 {
            h.egress(&response(80, neighbour, "HTTP/1.1 404 Not Found\r\n\r\n"))
                .unwrap();
        }
        check_xdp(
            &h,
            &format!("{neighbour}: shadow ban"),
            &neighbour_syn,
            Reason::NoMatch,
            &[Reason::Banned],
        );
    }
    let bans = h.telemetry.bans().unwrap();
    let nets: Vec<String> = bans.iter().map(|b| b.net.to_string()).collect();
    for net in [
        "198.51.100.7/32",
        "198.51.100.8/32",
        "2001:db8:5::/64",
        "2001:db8:6::/64",
    ] {
        assert!(
            nets.contains(&net.to_string()),
            "no ban of {net} in {nets:?}"
        );
    }
    assert_eq!(bans.len(), 4, "{nets:?}");
}

const STRICT_ROUTES: &str =
    "http:\n  ports: [80]\n  routes:\n    - {name: hidden, path: /admin, deny: true}\n";

/// Each evasion shape the README lists, through XDP and TC, under `strict: true` (the
/// default): caught as `http_evasion` (the connection reset) or judged by its route; the
/// shapes the README says are out of sight pass unjudged, as it says. `strict: false`
/// judges by route only; `strict: shadow` counts and passes.
#[test]
fn http_evasion_shapes_are_caught_or_judged() {
    require_kernel!();
    let h = Harness::new(STRICT_ROUTES).unwrap();
    let request = |text: &str| http_segment(80, text);
    let evasive = [
        ("empty segment", "GET //admin HTTP/1.1\r\n\r\n"),
        ("dot segment", "GET /./admin HTTP/1.1\r\n\r\n"),
        ("dot-dot segment", "GET /public/../admin HTTP/1.1\r\n\r\n"),
        ("trailing dot-dot", "GET /admin/x/.. HTTP/1.1\r\n\r\n"),
        ("encoded letter", "GET /%61dmin HTTP/1.1\r\n\r\n"),
        (
            "encoded dots, mixed case",
            "GET /x/%2e%2E/admin HTTP/1.1\r\n\r\n",
        ),
        ("encoded slash", "GET /public%2F..%2Fadmin HTTP/1.1\r\n\r\n"),
        ("a % without hex digits", "GET /admin%zz HTTP/1.1\r\n\r\n"),
        ("absolute form", "GET http://shop/admin HTTP/1.1\r\n\r\n"),
        ("a fragment in the target", "GET /admin#x HTTP/1.1\r\n\r\n"),
        ("request line split over segments", "POST /adm"),
        (
            "HTTP/2 cleartext preface",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
    ];
    for (what, text) in evasive {
        check_both(&h, what, &request(text), Reason::HttpEvasion, &[]);
    }
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(200));
    check_both(
        &h,
        "path longer than the window",
        &request(&long),
        Reason::HttpEvasion,
        &[],
    );
    let judged = [
        (
            "the route itself",
            "GET /admin HTTP/1.1\r\n\r\n",
            Reason::RouteDenied,
        ),
        (
            "below it",
            "GET /admin/users?x=1 HTTP/1.1\r\n\r\n",
            Reason::RouteDenied,
        ),
        (
            "an encoded space",
            "GET /a%20b HTTP/1.1\r\n\r\n",
            Reason::NoMatch,
        ),
        (
            "an encoded query",
            "GET /go?to=%2Fadmin HTTP/1.1\r\n\r\n",
            Reason::NoMatch,
        ),
        (
            "a long query",
            &format!("GET /s?q={} HTTP/1.1\r\n\r\n", "q".repeat(300)),
            Reason::NoMatch,
        ),
        ("OPTIONS *", "OPTIONS * HTTP/1.1\r\n\r\n", Reason::NoMatch),
        (
            "dots inside names",
            "GET /a.b/..c/...d HTTP/1.1\r\n\r\n",
            Reason::NoMatch,
        ),
        // Out of sight (README): only the request a segment starts with is read.
        (
            "pipelined",
            "GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
            Reason::NoMatch,
        ),
        (
            "after a body",
            "user=a&pw=bGET /admin HTTP/1.1\r\n\r\n",
            Reason::NoMatch,
        ),
    ];
    for (what, text, want) in judged {
        check_both(&h, what, &request(text), want, &[]);
    }
    // A first fragment (more to follow) is judged as any request, but refused by a drop:
    // rewritten into a RST it would still claim more fragments.
    for (what, text, want) in [
        (
            "fragment with the route",
            "GET /admin HTTP/1.1\r\n\r\n",
            Reason::RouteDenied,
        ),
        ("fragment cutting the path", "GET /adm", Reason::HttpEvasion),
    ] {
        let mut spec = FrameSpec::tcp("203.0.113.50", 80, false, true).content(text.as_bytes());
        spec.ipv4_fragment = (0, true);
        let frame = spec.build();
        for (hook, run) in [
            ("xdp", Harness::xdp_out as fn(&Harness, &[u8]) -> _),
            ("tc", Harness::tc_out),
        ] {
            let before = h.counters().unwrap();
            let (action, _) = run(&h, &frame).unwrap();
            let (verdicts, _) = delta(&before, &h.counters().unwrap());
            assert_eq!(action, Action::Drop, "{what} ({hook})");
            assert_eq!(verdicts, vec![(want, 1)], "{what} ({hook})");
        }
    }

    let lenient =
        Harness::new(&STRICT_ROUTES.replace("ports: [80]", "ports: [80]\n  strict: false"))
            .unwrap();
    check_both(
        &lenient,
        "lenient: empty segment",
        &request("GET //admin HTTP/1.1\r\n\r\n"),
        Reason::NoMatch,
        &[],
    );
    check_both(
        &lenient,
        "lenient: the route",
        &request("GET /admin HTTP/1.1\r\n\r\n"),
        Reason::RouteDenied,
        &[],
    );
    let shadow =
        Harness::new(&STRICT_ROUTES.replace("ports: [80]", "ports: [80]\n  strict: shadow"))
            .unwrap();
    check_both(
        &shadow,
        "shadow: empty segment",
        &request("GET //admin HTTP/1.1\r\n\r\n"),
        Reason::NoMatch,
        &[Reason::HttpEvasion],
    );
}

/// A refused request's retransmission (its connection reset since) is refused again
/// without taking a token: the token that refilled meanwhile is still there for the next
/// request.
#[test]
fn a_refused_requests_retransmission_is_not_charged_again() {
    require_kernel!();
    let policy = "http:\n  ports: [80]\n  routes:\n    - {name: login, methods: [POST], path: /login, rate: 10/s, burst: 1}\n";
    let h = Harness::new(policy).unwrap();
    let login = |sport: u16| {
        let mut spec = FrameSpec::tcp("203.0.113.70", 80, false, true)
            .content(b"POST /login HTTP/1.1\r\nHost: shop\r\n\r\nuser=a&pw=b");
        spec.sport = sport;
        accepted(&h, spec).build()
    };
    check_xdp(
        &h,
        "first connection",
        &login(41001),
        Reason::WithinLimit,
        &[],
    );
    check_xdp(
        &h,
        "second, over the rate",
        &login(41002),
        Reason::RouteLimited,
        &[],
    );
    // A token refills in 100 ms; the second connection's retransmission comes later.
    std::thread::sleep(Duration::from_millis(150));
    check_xdp(
        &h,
        "its retransmission",
        &login(41002),
        Reason::RouteLimited,
        &[],
    );
    check_xdp(
        &h,
        "a third connection gets the token",
        &login(41003),
        Reason::WithinLimit,
        &[],
    );
}

/// A request a route took a token for, sent again (its ACK lost on the way back), passes
/// without taking another: the next request on the connection still has its token.
#[test]
fn a_passed_requests_retransmission_is_not_charged_again() {
    require_kernel!();
    let policy = "http:\n  ports: [80]\n  routes:\n    - {name: login, methods: [POST], path: /login, rate: 1/h, burst: 2}\n";
    let h = Harness::new(policy).unwrap();
    let login = |seq: u32| {
        let mut spec = FrameSpec::tcp("203.0.113.71", 80, false, true)
            .content(b"POST /login HTTP/1.1\r\nHost: shop\r\n\r\nuser=a&pw=b");
        spec.seq = seq;
        accepted(&h, spec).build()
    };
    check_xdp(&h, "first request", &login(1), Reason::WithinLimit, &[]);
    for n in 0..3 {
        check_xdp(
            &h,
            &format!("its retransmission {n}"),
            &login(1),
            Reason::WithinLimit,
            &[],
        );
    }
    check_xdp(&h, "second request", &login(100), Reason::WithinLimit, &[]);
    check_xdp(
        &h,
        "third, over the burst",
        &login(200),
        Reason::RouteLimited,
        &[],
    );
}

/// A policy of 10,000 routes (`capacity.rules` raised) loads, and each route judges its
/// own requests and counts them under its own rule id, whichever side of the reserved ids
/// (1022, 1023) its id falls on; a shorter table refuses the policy with the reason.
#[test]
fn ten_thousand_routes_each_judge_their_own_requests() {
    require_kernel!();
    const ROUTES: usize = 10_000;
    let policy = |capacity: usize| {
        let mut text =
            format!("capacity: {{rules: {capacity}}}\nhttp:\n  ports: [80]\n  routes:\n");
        for i in 0..ROUTES {
            text.push_str(&format!("    - {{name: r{i}, path: /r/{i}, deny: true}}\n"));
        }
        text
    };
    let error = Harness::new(&policy(ROUTES - 1))
        .err()
        .expect("too small a table");
    assert!(
        error.to_string().contains("capacity.rules (9999)"),
        "{error:#}"
    );
    let h = Harness::new(&policy(ROUTES)).unwrap();
    let ids: std::collections::HashMap<String, u32> = h
        .enforcer
        .rules_in_force()
        .names
        .into_iter()
        .map(|(id, name)| (name, id))
        .collect();
    let mut spread = Vec::new();
    for i in [0, 1020, 1021, 5000, ROUTES - 1] {
        let name = format!("r{i}");
        let request = http_segment(80, &format!("GET /r/{i}/x HTTP/1.1\r\n\r\n"));
        check_xdp(&h, &name, &request, Reason::RouteDenied, &[]);
        spread.push(ids[&name]);
        let counted = h.telemetry.rule_counters([ids[&name]]).unwrap();
        assert_eq!(counted.len(), 1, "{name} counted under its own id");
        assert_eq!(counted[0].1.dropped, 1, "{name}");
    }
    assert!(
        spread.iter().any(|&id| id < 1022) && spread.iter().any(|&id| id > 1023),
        "ids on both sides of the reserved ones: {spread:?}"
    );
    check_xdp(
        &h,
        "no such route",
        &http_segment(80, "GET /r/10000 HTTP/1.1\r\n\r\n"),
        Reason::NoMatch,
        &[],
    );
}

/// Detector decisions (CrowdSec bans, as the decision sync writes them) refuse a source in
/// XDP and TC, IPv4 and IPv6, after the allow list (which wins) and operator blocks (which
/// win and are counted as blocks), and before everything else; an ended decision refuses
/// nothing. On an HTTP port a decided client is refused as a banned one: SYNs dropped,
/// requests reset, ACKs spared.
#[test]
fn detector_decisions_refuse_after_allow_and_blocks() {
    require_kernel!();
    let policy = "allow: [203.0.113.10/32]\nhttp:\n  ports: [80]\n";
    let mut h = Harness::new(policy).unwrap();
    let net = |cidr: &str| cidr.parse::<ipnet::IpNet>().unwrap();
    let until = |secs: u64| {
        let expires_ns = portcullis::maps::monotonic_now_ns() + secs * 1_000_000_000;
        DecisionEntry::new(expires_ns, Origin::Cscli)
    };
    h.decisions.set(net("203.0.113.0/24"), until(3600)).unwrap();
    h.decisions
        .set(net("2001:db8:5::/48"), until(3600))
        .unwrap();
    h.decisions
        .set(net("198.51.100.9/32"), DecisionEntry::new(1, Origin::Cscli))
        .unwrap();
    h.bans.block(net("203.0.113.7/32"), u64::MAX).unwrap();
    let udp = |src: &str| FrameSpec::udp(src, 53).build();
    check_both(
        &h,
        "decided /24",
        &udp("203.0.113.5"),
        Reason::Decision,
        &[],
    );
    check_both(
        &h,
        "decided /48",
        &udp("2001:db8:5::9"),
        Reason::Decision,
        &[],
    );
    check_both(
        &h,
        "allow list wins",
        &udp("203.0.113.10"),
        Reason::Allowed,
        &[],
    );
    check_both(&h, "a block wins", &udp("203.0.113.7"), Reason::Banned, &[]);
    check_both(&h, "ended", &udp("198.51.100.9"), Reason::NoMatch, &[]);
    check_both(&h, "outside", &udp("203.0.114.5"), Reason::NoMatch, &[]);
    // On the HTTP port.
    let syn = FrameSpec::tcp("203.0.113.5", 80, true, false).build();
    check_both(&h, "decided SYN", &syn, Reason::Decision, &[]);
    let ack = FrameSpec::tcp("203.0.113.5", 80, false, true)
        .content(b"")
        .build();
    check_both(&h, "decided ACK, spared", &ack, Reason::NoMatch, &[]);
    let request = FrameSpec::tcp("203.0.113.5", 80, false, true)
        .content(b"GET / HTTP/1.1\r\n\r\n")
        .build();
    for (hook, run) in [
        ("xdp", Harness::xdp_out as fn(&Harness, &[u8]) -> _),
        ("tc", Harness::tc_out),
    ] {
        let before = h.counters().unwrap();
        let (action, out) = run(&h, &request).unwrap();
        assert_eq!(action, Action::Reset, "{hook}: decided request");
        assert_is_reset_of(hook, &out, &request, hook == "xdp");
        let counted =
            h.counters().unwrap().verdict(Reason::Decision) - before.verdict(Reason::Decision);
        assert_eq!(counted, 1, "{hook}: counted as a decision");
    }
    // Lifted: passes again.
    assert!(h.decisions.remove(net("203.0.113.0/24")).unwrap());
    check_both(&h, "lifted", &udp("203.0.113.5"), Reason::NoMatch, &[]);

    // Decisions on one address (the address maps, not the tries), IPv4 and IPv6.
    h.decisions.set(net("192.0.2.77/32"), until(3600)).unwrap();
    h.decisions
        .set(net("2001:db8:9::77/128"), until(3600))
        .unwrap();
    check_both(
        &h,
        "decided address",
        &udp("192.0.2.77"),
        Reason::Decision,
        &[],
    );
    check_both(
        &h,
        "its neighbour",
        &udp("192.0.2.78"),
        Reason::NoMatch,
        &[],
    );
    check_both(
        &h,
        "decided IPv6 address",
        &udp("2001:db8:9::77"),
        Reason::Decision,
        &[],
    );
    let listed: Vec<ipnet::IpNet> = h
        .decisions
        .entries()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        listed.contains(&net("192.0.2.77/32")) && listed.contains(&net("2001:db8:9::77/128")),
        "{listed:?}"
    );
    assert!(h.decisions.remove(net("192.0.2.77/32")).unwrap());
    assert!(
        !h.decisions.remove(net("192.0.2.77/32")).unwrap(),
        "removed once"
    );
    check_both(
        &h,
        "address lifted",
        &udp("192.0.2.77"),
        Reason::NoMatch,
        &[],
    );
}

/// Requests on connections not verified as their client's (no SYN-ACK noted, or a first
/// request that did not acknowledge the server's first byte: spoofed segments) charge one
/// pool for the route, never their source's bucket: spoofing a bystander's address costs
/// the bystander nothing, its own verified login still passes. The pool refuses past the
/// route's rate, by a drop (the connection may be someone else's), and bans no one.
#[test]
fn unverified_requests_share_a_pool_and_frame_no_one() {
    require_kernel!();
    let policy = "http:\n  ports: [80]\n  routes:\n    - {name: login, methods: [POST], path: /login, rate: 1/h, burst: 2, ban: {after: 1, within: 1m, for: 1h}}\n";
    let h = Harness::new(policy).unwrap();
    let bystander = "203.0.113.80";
    let login = |src: &str, sport: u16| {
        let mut spec = FrameSpec::tcp(src, 80, false, true)
            .content(b"POST /login HTTP/1.1\r\nHost: shop\r\n\r\nuser=a&pw=b");
        spec.sport = sport;
        spec
    };
    // Spoofed as the bystander, with no handshake; then with a SYN-ACK noted but a wrong
    // acknowledgment (a spoofer never sees the server's sequence number).
    let mut spoofed: Vec<Vec<u8>> = (0..6)
        .map(|n| login(bystander, 50000 + n).build())
        .collect();
    let guessed = login(bystander, 50100);
    h.egress(&guessed.syn_ack(SERVER_ISN)).unwrap();
    spoofed.push(guessed.acking(SERVER_ISN + 1).build());
    // And from anyone else: the same pool.
    spoofed.push(login("198.51.100.81", 50200).build());
    let mut verdicts = Vec::new();
    for frame in &spoofed {
        verdicts.push(h.xdp_out(frame).unwrap().0);
    }
    // A burst of 2 for all of them together (the first only marks the pool's admission
    // slot, the second takes the bucket it would have left); the rest are dropped.
    let mut want = vec![Action::Pass; 2];
    want.extend([Action::Drop; 6]);
    assert_eq!(verdicts, want);
    assert!(
        h.telemetry.bans().unwrap().is_empty(),
        "the pool bans no one"
    );

    // The bystander's own login, on a connection it completed: its own bucket, full.
    let own = accepted(&h, login(bystander, 51000)).build();
    check_xdp(&h, "the bystander's login", &own, Reason::WithinLimit, &[]);
    let counters = h.counters().unwrap();
    assert_eq!(counters.verdict(Reason::RouteLimited), 6);
}

/// Where a connection's first request must start (the first byte of the client's stream,
/// on a connection the client completed), a segment that does not start with a request
/// line the kernel reads is one the server reads otherwise: `http_evasion` under `strict`.
/// The same bytes later in the stream (a body), or on a connection with no SYN-ACK noted,
/// or with `strict: false`, pass.
#[test]
fn a_connection_that_opens_without_a_request_line_is_refused() {
    require_kernel!();
    let strict = Harness::new(STRICT_ROUTES).unwrap();
    let lenient = Harness::new(&format!("{STRICT_ROUTES}  strict: false\n")).unwrap();
    let shapes = [
        ("a request line split after two bytes", "GE"),
        ("CR LF before the method", "\r\nGET /admin HTTP/1.1\r\n\r\n"),
        ("a TAB after the method", "GET\t/admin HTTP/1.1\r\n\r\n"),
        (
            "a method the kernel does not know",
            "PROPFIND /admin HTTP/1.1\r\n\r\n",
        ),
        ("lowercase method", "get /admin HTTP/1.1\r\n\r\n"),
    ];
    for (n, (what, text)) in shapes.into_iter().enumerate() {
        let opening = |h: &Harness, sport: u16| {
            let mut spec = FrameSpec::tcp("203.0.113.90", 80, false, true).content(text.as_bytes());
            spec.sport = sport;
            accepted(h, spec)
        };
        let sport = 45000 + n as u16;
        check_both(
            &strict,
            what,
            &opening(&strict, sport).build(),
            Reason::HttpEvasion,
            &[],
        );
        check_both(
            &lenient,
            &format!("{what}, strict: false"),
            &opening(&lenient, sport).build(),
            Reason::NoMatch,
            &[],
        );
        // Later in the stream: the body of a request, say.
        let mut later = opening(&strict, sport + 100);
        later.seq += 500;
        check_both(
            &strict,
            &format!("{what}, later in the stream"),
            &later.build(),
            Reason::NoMatch,
            &[],
        );
        // No SYN-ACK noted for this connection.
        let mut unknown = FrameSpec::tcp("203.0.113.90", 80, false, true).content(text.as_bytes());
        unknown.sport = sport + 200;
        check_both(
            &strict,
            &format!("{what}, connection not noted"),
            &unknown.build(),
            Reason::NoMatch,
            &[],
        );
    }
    // An ordinary first request is judged by its route.
    let mut admin =
        FrameSpec::tcp("203.0.113.90", 80, false, true).content(b"GET /admin HTTP/1.1\r\n\r\n");
    admin.sport = 46000;
    let admin = accepted(&strict, admin).build();
    check_both(&strict, "a request line", &admin, Reason::RouteDenied, &[]);
}
