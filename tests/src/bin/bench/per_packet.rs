//! Per-packet cost in the kernel (BPF_PROG_TEST_RUN, many repetitions) for each path, next
//! to an XDP program that only passes (the floor), with growing deny lists; and the deny
//! path with events on (default budget) against events off.

use std::fmt::Write as _;

use agent_common::Action;
use anyhow::{Result, bail};
use portcullis::loader::XDP_PROGRAM;
use portcullis_tests::test_programs::FLOOR;
use portcullis_tests::{
    frames::{ETH_P_8021Q, FrameSpec, non_ip},
    harness::Harness,
};
use serde_json::{Value, json};

use crate::{Scale, median, policy_text};

fn paths() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("non-IP pass (ARP)", non_ip(0x0806, 28)),
        ("allow hit", FrameSpec::udp("192.0.2.7", 80).build()),
        ("deny hit", FrameSpec::udp("10.1.2.3", 80).build()),
        ("rate-limit pass", FrameSpec::udp("203.0.113.5", 53).build()),
        (
            "rate-limit drop",
            FrameSpec::udp("203.0.113.6", 5353).build(),
        ),
        ("no match", FrameSpec::udp("203.0.113.7", 80).build()),
        (
            "IPv6 deny hit",
            FrameSpec::udp("2001:db8:bad::1", 80).build(),
        ),
        ("IPv6 no match", FrameSpec::udp("2001:db8:1::1", 80).build()),
        (
            "802.1Q deny hit",
            FrameSpec::udp("10.1.2.3", 80).vlans(&[ETH_P_8021Q]).build(),
        ),
    ]
}

/// Median over `rounds` of the kernel's ns per run of `program` on `frame`.
fn ns_per_packet(harness: &Harness, program: &str, frame: &[u8], scale: &Scale) -> Result<f64> {
    let runs = (0..scale.rounds)
        .map(|_| {
            harness
                .programs
                .xdp_ns_per_run(program, frame, scale.repeat)
        })
        .collect::<Result<_>>()?;
    Ok(median(runs))
}

pub fn run(scale: &Scale) -> Result<(String, Value)> {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Per-packet cost (BPF_PROG_TEST_RUN, {} repetitions, median of {})\n",
        scale.repeat, scale.rounds
    );
    let _ = writeln!(
        md,
        "| path | {} | floor (XDP_PASS only) |",
        scale
            .cidrs
            .iter()
            .map(|s| format!("{s} CIDRs"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}---|", "---|".repeat(scale.cidrs.len()));

    let mut results: Vec<Value> = Vec::new();
    let mut table: Vec<(String, Vec<f64>, f64)> = paths()
        .iter()
        .map(|(n, _)| (n.to_string(), vec![], 0.0))
        .collect();
    for &size in &scale.cidrs {
        let harness = Harness::new(&policy_text(size, None))?;
        // Spend the tight rule's only token so its frame measures the drop path.
        harness.xdp(&paths()[4].1)?;
        for (i, (name, frame)) in paths().iter().enumerate() {
            let ns = ns_per_packet(&harness, XDP_PROGRAM, frame, scale)?;
            let floor = ns_per_packet(&harness, FLOOR, frame, scale)?;
            table[i].1.push(ns);
            table[i].2 = floor;
            results.push(json!({"path": name, "cidrs": size, "ns_per_packet": ns, "floor_ns_per_packet": floor}));
        }
    }
    for (name, values, floor) in &table {
        let cells: Vec<String> = values.iter().map(|ns| format!("{ns:.0} ns")).collect();
        let _ = writeln!(md, "| {name} | {} | {floor:.0} ns |", cells.join(" | "));
    }

    // Events: the deny path with the default budget against events off, same frame.
    let deny = FrameSpec::udp("10.1.2.3", 80).build();
    let mut events = Vec::new();
    let _ = writeln!(
        md,
        "\n## Deny path with events on and off, per packet\n\n| case | ns per packet |\n|---|---|"
    );
    for (label, per_second) in [
        ("events on (default budget)", None),
        ("events off", Some(0)),
    ] {
        let harness = Harness::new(&policy_text(10, per_second))?;
        let ns = ns_per_packet(&harness, XDP_PROGRAM, &deny, scale)?;
        let _ = writeln!(md, "| {label} | {ns:.0} ns |");
        events.push(json!({"case": label, "ns_per_packet": ns}));
    }
    let (http_md, http) = http_paths(scale)?;
    md.push_str(&http_md);
    let (responses_md, responses) = response_paths(scale)?;
    md.push_str(&responses_md);
    let (decisions_md, decisions) = decision_paths(scale)?;
    md.push_str(&decisions_md);
    let (bans_md, bans) = ban_paths(scale)?;
    md.push_str(&bans_md);
    Ok((
        md,
        json!({"paths": results, "events": events, "http": http, "responses": responses, "decisions": decisions, "bans": bans}),
    ))
}

/// Route counts the HTTP table is measured with; the policy's `capacity.rules` is raised to
/// the largest.
const ROUTE_COUNTS: [usize; 3] = [10, 1_000, 10_000];

/// A TCP segment to port 80 carrying `payload`.
/// The server's initial sequence number on the connection `to_http_port` segments are on.
const SERVER_ISN: u32 = 7000;

/// A segment to HTTP port 80 on a connection the server accepted (`accept` it first) and
/// the client completed, carrying `payload`.
fn to_http_port(payload: &str) -> Vec<u8> {
    FrameSpec::tcp("203.0.113.9", 80, false, true)
        .content(payload.as_bytes())
        .acking(SERVER_ISN)
        .build()
}

/// As `to_http_port`, later in the client's stream: a request's body, say.
fn body_segment(payload: &str) -> Vec<u8> {
    let mut spec = FrameSpec::tcp("203.0.113.9", 80, false, true)
        .content(payload.as_bytes())
        .acking(SERVER_ISN);
    spec.seq = 1000;
    spec.build()
}

/// Notes the connection of `to_http_port`'s segments as accepted, as the server's SYN-ACK
/// through TC egress would: their requests are then verified, the common case.
fn accept(harness: &Harness) -> Result<()> {
    let client = FrameSpec::tcp("203.0.113.9", 80, false, true);
    harness.egress(&client.syn_ack(SERVER_ISN))
}

/// CrowdSec decisions held, for the decision table: none, one (a /15 over the hit's
/// source), and a community blocklist's worth of /32s besides.
const DECISION_COUNTS: [usize; 3] = [0, 1, 100_000];

/// What CrowdSec decisions cost: a packet no decision covers (every packet pays the
/// decision lookup) and a decision hit, as the decision maps fill.
fn decision_paths(scale: &Scale) -> Result<(String, Vec<Value>)> {
    let mut harness = Harness::new(&policy_text(10, None))?;
    let hit = FrameSpec::udp("198.18.0.9", 80).build();
    let miss = FrameSpec::udp("203.0.113.7", 80).build();
    let mut md = format!(
        "\n## CrowdSec decisions, per packet (BPF_PROG_TEST_RUN, median of {})\n\n| path | {} | floor |\n|---|{}---|\n",
        scale.rounds,
        DECISION_COUNTS
            .map(|n| format!("{n} decisions"))
            .join(" | "),
        "---|".repeat(DECISION_COUNTS.len())
    );
    let entry = agent_common::DecisionEntry::new(u64::MAX, agent_common::decision::Origin::Capi);
    let mut held = 0;
    let (mut miss_row, mut hit_row) = (Vec::new(), Vec::new());
    let mut results = Vec::new();
    for count in DECISION_COUNTS {
        while held < count {
            let net = if held == 0 {
                "198.18.0.0/15".parse()?
            } else {
                let n = held as u32;
                ipnet::IpNet::new(std::net::Ipv4Addr::from(0x6440_0000 + n * 7).into(), 32)?
            };
            harness.decisions.set(net, entry)?;
            held += 1;
        }
        let miss_ns = ns_per_packet(&harness, XDP_PROGRAM, &miss, scale)?;
        miss_row.push(format!("{miss_ns:.0} ns"));
        let hit_ns = if count > 0 {
            let ns = ns_per_packet(&harness, XDP_PROGRAM, &hit, scale)?;
            hit_row.push(format!("{ns:.0} ns"));
            Some(ns)
        } else {
            hit_row.push("-".to_string());
            None
        };
        results.push(json!({"decisions": count, "no_match_ns": miss_ns, "hit_ns": hit_ns}));
    }
    let floor = ns_per_packet(&harness, FLOOR, &miss, scale)?;
    let _ = writeln!(
        md,
        "| no decision (no match) | {} | {floor:.0} ns |",
        miss_row.join(" | ")
    );
    let _ = writeln!(
        md,
        "| decision hit | {} | {floor:.0} ns |",
        hit_row.join(" | ")
    );
    Ok((md, results))
}

/// What a banned or blocked source's packet costs: a source banned by a rate limit's
/// `ban:` (its own packets made the ban), and one an operator blocked, each next to a deny
/// list entry for the same kind of source.
fn ban_paths(scale: &Scale) -> Result<(String, Vec<Value>)> {
    let policy = "deny: [10.0.0.0/8]\nrate_limits:\n  - {name: probe, protocol: udp, ports: [7], rate: 1/h, burst: 1, ban: {after: 1, within: 1h, for: 1h}}\n";
    let mut harness = Harness::new(policy)?;
    let banned = FrameSpec::udp("203.0.113.20", 7).build();
    // The first packet is remembered, the second is over the limit and bans the source.
    for _ in 0..2 {
        harness.xdp(&banned)?;
    }
    let blocked = FrameSpec::udp("198.51.100.9", 7).build();
    let an_hour = std::time::Duration::from_secs(3600).as_nanos() as u64;
    harness.bans.block(
        "198.51.100.0/24".parse()?,
        portcullis::maps::monotonic_now_ns() + an_hour,
    )?;
    let cases = [
        ("escalation ban hit", banned),
        ("operator block hit", blocked),
        (
            "deny hit (for comparison)",
            FrameSpec::udp("10.1.2.3", 7).build(),
        ),
    ];
    let mut md = format!(
        "\n## Bans and blocks, per packet (BPF_PROG_TEST_RUN, median of {})\n\n| path | ns per packet | floor |\n|---|---|---|\n",
        scale.rounds
    );
    let mut results = Vec::new();
    for (name, frame) in cases {
        let verdict = harness.xdp(&frame)?;
        if verdict != Action::Drop {
            bail!("{name}: the frame was not dropped ({verdict:?})");
        }
        let ns = ns_per_packet(&harness, XDP_PROGRAM, &frame, scale)?;
        let floor = ns_per_packet(&harness, FLOOR, &frame, scale)?;
        let _ = writeln!(md, "| {name} | {ns:.0} ns | {floor:.0} ns |");
        results.push(json!({"path": name, "ns_per_packet": ns, "floor_ns_per_packet": floor}));
    }
    Ok((md, results))
}

/// A segment from the server toward a client, from `port`, carrying `payload`.
fn from_port(port: u16, payload: &str) -> Vec<u8> {
    FrameSpec::reply("10.0.0.2", port, "203.0.113.9", 40000)
        .content(payload.as_bytes())
        .build()
}

/// What TC egress costs on the segments leaving the server. The rule's `after` is out of
/// reach, so each run counts the 401 and none bans.
fn response_paths(scale: &Scale) -> Result<(String, Vec<Value>)> {
    let policy = "http:\n  ports: [80]\n  responses:\n    - {name: auth-failures, status: [401, 403], ban: {after: 1000000000, within: 1m, for: 1m}}\n";
    let harness = Harness::new(policy)?;
    // The server accepts the connection the responses below go out on.
    accept(&harness)?;
    let syn_ack = FrameSpec::tcp("203.0.113.9", 80, false, true).syn_ack(SERVER_ISN);
    let cases = [
        ("SYN-ACK from an HTTP port, noted", syn_ack),
        (
            "401 counted by a response rule",
            from_port(80, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "200, no rule for its status",
            from_port(80, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ),
        (
            "body segment from an HTTP port",
            from_port(80, "{\"items\": [1, 2, 3]}"),
        ),
        ("segment from another port", from_port(443, "\x16\x03\x01")),
    ];
    let mut md = format!(
        "\n## HTTP responses, per segment (TC egress, BPF_PROG_TEST_RUN, median of {})\n\n| path | ns per segment |\n|---|---|\n",
        scale.rounds
    );
    let mut results = Vec::new();
    for (name, frame) in cases {
        let runs = (0..scale.rounds)
            .map(|_| harness.programs.egress_ns_per_run(&frame, scale.repeat))
            .collect::<Result<_>>()?;
        let ns = median(runs);
        let _ = writeln!(md, "| {name} | {ns:.0} ns |");
        results.push(json!({"path": name, "ns_per_packet": ns}));
    }
    // The 401 row must have been the path it names.
    let rules = harness.enforcer.rules_in_force();
    let id = rules.names.iter().find(|(_, n)| *n == "auth-failures");
    let counted = harness.telemetry.rule_counters(id.map(|(id, _)| *id))?;
    if counted.first().is_none_or(|(_, c)| c.passed == 0) {
        bail!("the 401 rows were not counted by the response rule");
    }
    Ok((md, results))
}

/// The HTTP paths with growing route tables. Routes are in shadow mode, so that a refusal
/// is counted but does not rewrite the frame the runs repeat.
fn http_paths(scale: &Scale) -> Result<(String, Vec<Value>)> {
    let cases = [
        (
            "request, route hit",
            to_http_port("GET /route/5/items HTTP/1.1\r\nHost: shop\r\n\r\n"),
        ),
        (
            "request, no route",
            to_http_port("GET /elsewhere HTTP/1.1\r\nHost: shop\r\n\r\n"),
        ),
        (
            "segment that starts no request",
            body_segment("user=alice&password=secret"),
        ),
        (
            "TCP, other port",
            FrameSpec::tcp("203.0.113.9", 443, false, true).build(),
        ),
    ];
    let mut md = format!(
        "\n## HTTP routes, per packet (BPF_PROG_TEST_RUN, median of {})\n\n| path | {} | floor |\n|---|{}---|\n",
        scale.rounds,
        ROUTE_COUNTS.map(|n| format!("{n} routes")).join(" | "),
        "---|".repeat(ROUTE_COUNTS.len())
    );
    let mut rows: Vec<(String, Vec<f64>, f64)> = Vec::new();
    let mut results = Vec::new();
    for (column, &routes) in ROUTE_COUNTS.iter().enumerate() {
        let mut policy = format!(
            "capacity: {{rules: {}}}\nhttp:\n  ports: [80]\n  routes:\n",
            ROUTE_COUNTS[ROUTE_COUNTS.len() - 1]
        );
        for i in 0..routes {
            let _ = writeln!(
                policy,
                "    - {{name: r{i}, path: /route/{i}, deny: true, mode: shadow}}"
            );
        }
        let harness = Harness::new(&policy)?;
        accept(&harness)?;
        for (row, (name, frame)) in cases.iter().enumerate() {
            let ns = ns_per_packet(&harness, XDP_PROGRAM, frame, scale)?;
            let floor = ns_per_packet(&harness, FLOOR, frame, scale)?;
            if column == 0 {
                rows.push((name.to_string(), Vec::new(), floor));
            }
            rows[row].1.push(ns);
            results.push(json!({"path": name, "routes": routes, "ns_per_packet": ns, "floor_ns_per_packet": floor}));
        }
    }
    for (name, values, floor) in rows {
        let cells: Vec<String> = values.iter().map(|ns| format!("{ns:.0} ns")).collect();
        let _ = writeln!(md, "| {name} | {} | {floor:.0} ns |", cells.join(" | "));
    }
    Ok((md, results))
}
