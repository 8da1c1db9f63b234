//! 100,000+ random frames, valid and malformed, through the real XDP program (and a share
//! through TC), each verdict compared with the userspace reference model. The seed is
//! printed; set PORTCULLIS_SEED to replay a run.

use std::{collections::BTreeMap, path::Path};

use agent_common::{MalformedCause, Reason};
use portcullis_tests::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, FrameSpec, L4, non_ip},
    harness::Harness,
    model::Model,
    require_kernel,
};
use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};

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
  - cidr: 2001:db8:bad:1::/64
    mode: shadow
    name: bad-shadow
rate_limits:
  - {name: dns, protocol: udp, ports: [53], rate: 1/h, burst: 3}
  - name: login
    protocol: tcp
    ports: [443, "8000-8010"]
    count: connections
    rate: 1/h
    burst: 2
    ban: {after: 3, within: 1h, for: 1h}
  - {name: web-shadow, protocol: tcp, ports: [8080], rate: 1/h, burst: 1, mode: shadow}
  - {name: mdns-by-64, protocol: udp, ports: [5353], rate: 1/h, burst: 2}
  - {name: syslog-by-24, protocol: udp, ports: [514], rate: 1/h, burst: 2, prefix_v4: 24}
  - {name: tcp-all, protocol: tcp, rate: 1/h, burst: 40}
  - {name: icmp-all, protocol: icmp, rate: 1/h, burst: 20, ban: {after: 5, within: 1h, for: 1h}}
http:
  ports: [80, 8080]
  routes:
    - {name: r-login, methods: [POST, GET, HEAD, DELETE], path: /api/login, rate: 1/h, burst: 1, prefix_v4: 8, prefix_v6: 32}
    - {name: r-api, path: /api, rate: 1/h, burst: 2, prefix_v4: 24, mode: shadow}
    - {name: r-search, methods: [GET], path: /search, rate: 1/h, burst: 2, over_limit: drop}
    - {name: r-admin, path: /admin/, deny: true}
    - {name: r-static, path: /static/, deny: true, mode: shadow}
"#;

/// A rule for every protocol catches all IP traffic no other rule takes, so with it no
/// packet can end as `no_match`; it gets a run of its own.
const CATCH_ALL: &str = "  - {name: everything, protocol: any, rate: 1/h, burst: 150, prefix_v4: 16, prefix_v6: 48, mode: shadow}\n";

/// (hook, catch-all rule, frames, frames that must be judged). The catch-all run's 30,000
/// frames left a shadow route's limit unreached for some seeds (12074312539527019169):
/// its coverage checks need more.
const RUNS: [(&str, bool, usize, usize); 3] = [
    ("xdp", false, 100_000, 100_000),
    ("xdp", true, 60_000, 60_000),
    ("tc", false, 40_000, 30_000),
];

fn source(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..=255u8);
    let m = rng.random_range(0..8u8);
    match rng.random_range(0..15) {
        0 => format!("10.1.{m}.{n}"),
        1 => format!("10.{}.{m}.{n}", rng.random_range(2..=255u8)),
        2 => format!("192.0.2.{n}"),
        3 => format!("198.51.100.{n}"),
        4 | 5 => format!("203.0.113.{}", rng.random_range(0..16u8)),
        6 => format!("203.0.{}.{n}", rng.random_range(0..4u8)),
        7 => format!("2001:db8:a::{n:x}"),
        8 => format!("2001:db8:bad:{}::{n:x}", rng.random_range(0..3u8)),
        9 | 10 => format!("2001:db8:5:{m}::{:x}", rng.random_range(0..4u8)),
        11 => format!("2001:db8:{m}:1::{n:x}"),
        // IPv4-mapped IPv6 sources, judged as the IPv4 hosts they name.
        12 => format!(
            "::ffff:{}.{m}.{n}",
            ["10.1", "10.9", "192.0", "203.0"][rng.random_range(0..4)]
        ),
        _ => format!(
            "{}.{}.{}.{}",
            rng.random_range(1..224u8),
            n,
            m,
            rng.random_range(0..=255u8)
        ),
    }
}

fn port(rng: &mut StdRng) -> u16 {
    const PORTS: [u16; 9] = [53, 443, 8005, 8080, 5353, 514, 9999, 8010, 80];
    if rng.random_bool(0.85) {
        PORTS[rng.random_range(0..PORTS.len())]
    } else {
        rng.random_range(1..=65535)
    }
}

/// A request line, or something that looks almost like one: methods, case, paths on and
/// off segment boundaries, evasive shapes (dot and empty segments, percent-encodings,
/// absolute form, the HTTP/2 preface), cut short.
fn request(rng: &mut StdRng) -> Vec<u8> {
    const METHODS: [&str; 7] = ["GET", "POST", "HEAD", "DELETE", "OPTIONS", "post", "GETX"];
    const PATHS: [&str; 12] = [
        "/search",
        "/api/login",
        "/api/login/reset",
        "/api/loginx",
        "/api",
        "/api/items?page=2",
        "/admin/",
        "/admin",
        "/admin/users",
        "/",
        "*",
        "/static/app.js",
    ];
    const EVASIVE: [&str; 10] = [
        "//admin",
        "/./admin",
        "/x/../admin",
        "/admin/..",
        "/%61dmin",
        "/%2e%2E/admin",
        "/a%20b",
        "/a%2Fb",
        "/a%zz",
        "http://shop/admin",
    ];
    // Mostly whole request lines (a path cut before its end is evasive under `strict`).
    const ENDS: [&str; 7] = [
        " HTTP/1.1\r\nHost: shop\r\n\r\n",
        " HTTP/1.0\r\n\r\n",
        "?next=/ HTTP/1.1\r\n\r\n",
        "/ HTTP/1.1\r\n\r\n",
        "?next=/",
        "/",
        "",
    ];
    let method = METHODS[rng.random_range(0..METHODS.len())];
    let path = if rng.random_bool(0.25) {
        EVASIVE[rng.random_range(0..EVASIVE.len())]
    } else {
        PATHS[rng.random_range(0..PATHS.len())]
    };
    let end = ENDS[rng.random_range(0..ENDS.len())];
    let mut line = if rng.random_bool(0.03) {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    } else {
        format!("{method} {path}{end}").into_bytes()
    };
    if rng.random_bool(0.1) {
        line.truncate(rng.random_range(0..=line.len()));
    }
    line
}

fn ext(rng: &mut StdRng) -> Ext {
    match rng.random_range(0..6) {
        0 => Ext::HopByHop,
        1 => Ext::DestOpts,
        2 => Ext::Routing,
        3 => Ext::Auth,
        4 => Ext::Fragment {
            offset: 0,
            more: true,
        },
        _ => Ext::Fragment {
            offset: rng.random_range(1..100),
            more: rng.random_bool(0.5),
        },
    }
}

#[derive(Default)]
struct Shape {
    non_ip: usize,
    cut: usize,
    corrupted: usize,
}

fn random_frame(rng: &mut StdRng, shape: &mut Shape) -> Vec<u8> {
    if rng.random_bool(0.04) {
        shape.non_ip += 1;
        let ether_type =
            [0x0806, 0x88cc, 0x8847, rng.random_range(0..=0xffffu16)][rng.random_range(0..4)];
        return non_ip(ether_type, rng.random_range(0..64));
    }
    let src = source(rng);
    let l4 = match rng.random_range(0..10) {
        0..=3 => L4::Tcp {
            dport: port(rng),
            syn: rng.random_bool(0.6),
            ack: rng.random_bool(0.4),
        },
        4..=6 => L4::Udp { dport: port(rng) },
        7 | 8 => L4::Icmp,
        _ => L4::Raw {
            protocol: [47, 50, 132, 59, 1, 58][rng.random_range(0..6)],
        },
    };
    let tcp = matches!(l4, L4::Tcp { .. });
    let mut spec = FrameSpec::new(&src, l4);
    spec.payload = rng.random_range(0..40);
    if tcp && rng.random_bool(0.4) {
        spec = spec.content(&request(rng));
    }
    spec.vlans = match rng.random_range(0..10) {
        0 => vec![ETH_P_8021Q],
        1 => vec![ETH_P_8021AD, ETH_P_8021Q],
        2 => vec![ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q],
        _ => vec![],
    };
    if src.contains('.') {
        spec.ipv4_options = 4 * rng.random_range(0..=10);
        if rng.random_bool(0.15) {
            spec.ipv4_fragment = (rng.random_range(0..50), rng.random_bool(0.5));
        }
    } else {
        let count = [0, 0, 0, 1, 1, 2, 3, 8, 9, 10][rng.random_range(0..10)];
        spec.ipv6_exts = (0..count).map(|_| ext(rng)).collect();
    }
    let mut frame = spec.build();
    if rng.random_bool(0.15) {
        shape.cut += 1;
        frame.truncate(rng.random_range(14..=frame.len()));
    }
    if rng.random_bool(0.1) {
        shape.corrupted += 1;
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(12..frame.len());
            frame[at] = rng.random();
        }
    }
    frame
}

/// Detector decisions both sides hold during the runs.
const DECISIONS: [&str; 5] = [
    "10.1.3.0/24",
    "198.51.100.0/25",
    "203.0.2.0/24",
    "203.0.113.12/30",
    "2001:db8:5:3::/64",
];

fn policy(catch_all: bool) -> String {
    if catch_all {
        // The catch-all joins the rate limits, before the http section.
        POLICY.replacen("http:\n", &format!("{CATCH_ALL}http:\n"), 1)
    } else {
        POLICY.to_string()
    }
}

/// The counters that are not zero, by the name of what they count.
fn nonzero<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    get: impl Fn(T) -> u64,
) -> BTreeMap<&'static str, u64> {
    all.iter()
        .map(|&t| (name(t), get(t)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn by_reason(get: impl Fn(Reason) -> u64) -> BTreeMap<&'static str, u64> {
    nonzero(&Reason::ALL, Reason::name, get)
}

fn by_cause(get: impl Fn(MalformedCause) -> u64) -> BTreeMap<&'static str, u64> {
    nonzero(&MalformedCause::ALL, MalformedCause::name, get)
}

#[test]
fn kernel_agrees_with_the_reference_model_on_random_frames() {
    require_kernel!();
    let seed = std::env::var("PORTCULLIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (PORTCULLIS_SEED={seed} replays this run)");

    for (hook, catch_all, frames, needed) in RUNS {
        let mut rng = StdRng::seed_from_u64(seed);
        let policy = policy(catch_all);
        let mut h = Harness::new(&policy).unwrap();
        let rule_ids = h
            .enforcer
            .rules_in_force()
            .names
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect();
        let mut model = Model::new(
            portcullis::policy::parse(Path::new("differential.yaml"), &policy).unwrap(),
            &rule_ids,
        );
        // Detector decisions: one inside the allow list (allow wins), one inside a deny
        // entry (the deny wins), others on sources that rate limits and bans also judge.
        for cidr in DECISIONS {
            let net: ipnet::IpNet = cidr.parse().unwrap();
            let entry = agent_common::DecisionEntry::new(
                u64::MAX,
                agent_common::decision::Origin::Crowdsec,
            );
            h.decisions.set(net, entry).unwrap();
            model.add_decision(net);
        }
        let hook_name = if catch_all {
            format!("{hook} with catch-all")
        } else {
            hook.to_string()
        };
        let hook_name = hook_name.as_str();
        let mut shape = Shape::default();
        let mut judged = 0;
        let mut refused_by_test_run = 0;
        for i in 0..frames {
            let frame = random_frame(&mut rng, &mut shape);
            let kernel = if hook == "xdp" {
                h.xdp(&frame)
            } else {
                h.tc(&frame)
            };
            // BPF_PROG_TEST_RUN for TC refuses frames with an incomplete IP header; the
            // model must not see them either, or its state would drift.
            let Ok(kernel) = kernel else {
                assert_eq!(hook, "tc", "XDP test run failed on frame {i}: {frame:02x?}");
                refused_by_test_run += 1;
                continue;
            };
            let (want, reason) = model.judge(&frame);
            assert_eq!(
                kernel, want,
                "{hook_name} frame {i} (seed {seed}): kernel {kernel:?}, model {want:?} ({reason:?})\nframe {frame:02x?}"
            );
            judged += 1;
        }
        let counters = h.counters().unwrap();
        let kernel_verdicts = by_reason(|r| counters.verdict(r));
        let model_verdicts = by_reason(|r| model.verdicts.get(&r).copied().unwrap_or(0));
        let kernel_shadow = by_reason(|r| counters.shadowed(r));
        let model_shadow = by_reason(|r| model.shadow.get(&r).copied().unwrap_or(0));
        println!(
            "{hook_name}: {judged} frames judged alike ({} not IP, {} cut, {} corrupted; {refused_by_test_run} refused by the TC test run)",
            shape.non_ip, shape.cut, shape.corrupted
        );
        println!("{hook_name}: verdicts {kernel_verdicts:?}");
        println!("{hook_name}: shadow hits {kernel_shadow:?}");
        assert_eq!(
            kernel_verdicts, model_verdicts,
            "{hook_name}: counters by reason"
        );
        assert_eq!(
            kernel_shadow, model_shadow,
            "{hook_name}: shadow counters by reason"
        );
        let kernel_causes = by_cause(|c| counters.malformed(c));
        let model_causes = by_cause(|c| model.malformed.get(&c).copied().unwrap_or(0));
        println!("{hook_name}: malformed by cause {kernel_causes:?}");
        assert_eq!(
            kernel_causes, model_causes,
            "{hook_name}: malformed counters by cause"
        );
        assert!(judged >= needed, "{hook_name}: only {judged} frames judged");
        for reason in Reason::ALL
            .into_iter()
            .filter(|&r| !(catch_all && r == Reason::NoMatch))
        {
            assert!(
                counters.verdict(reason) > 0,
                "{hook_name}: the random frames never produced {reason:?}; the generator needs widening"
            );
        }
        for reason in [Reason::RouteDenied, Reason::RouteLimited] {
            assert!(
                counters.shadowed(reason) > 0,
                "{hook_name}: the random frames never hit {reason:?} in shadow mode; the generator needs widening"
            );
        }
    }
}
