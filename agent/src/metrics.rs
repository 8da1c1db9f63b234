//! Prometheus metrics, in the text format, rendered with prometheus-client from a snapshot
//! of the kernel's counters taken at scrape time. The kernel's counters are the truth; a
//! fresh registry per scrape just encodes them, so nothing here can drift from the maps.

use agent_common::{Action, IfaceCounters, MalformedCause, Reason, RuleCounters};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    control::protocol::{CrowdsecStatus, ListStatus},
    maps::Counters,
    policy::Capacity,
};

/// One program's own cost, from the kernel's BPF statistics (`kernel.bpf_stats_enabled`).
#[derive(Debug, Clone)]
pub struct ProgramStats {
    pub interface: String,
    pub hook: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub rules: Vec<(String, RuleCounters)>,
    /// Which of `rules` are HTTP routes.
    pub routes: std::collections::BTreeSet<String>,
    /// Which of `rules` are response rules.
    pub responses: std::collections::BTreeSet<String>,
    pub interfaces: Vec<(String, IfaceCounters)>,
    /// Escalation bans in force.
    pub bans_active: usize,
    /// Operator blocks in force.
    pub blocks_active: usize,
    pub allow_entries: usize,
    pub deny_entries: usize,
    /// Named rules in force, against `capacity.rules`.
    pub named_rules: usize,
    pub buckets: usize,
    /// Seconds since bans, blocks and buckets were counted (see `census`).
    pub census_age_secs: u64,
    pub capacity: Capacity,
    pub policy_version: u64,
    /// False while the policy file is invalid or unreadable (an earlier version is in force).
    pub policy_file_valid: bool,
    pub apply_failures: u64,
    /// Errors the agent carried on after, by what failed.
    pub runtime_errors: Vec<(String, u64)>,
    /// Event and summary lines the agent could not write to stdout.
    pub lines_unwritten: u64,
    pub programs: Vec<ProgramStats>,
    pub bpf_stats_enabled: bool,
    /// The CrowdSec decision sync, when the agent follows a Local API.
    pub crowdsec: Option<CrowdsecStatus>,
    /// The IP lists the policy names.
    pub lists: Vec<ListStatus>,
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value as i64);
    registry.register(name, help, gauge);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn render_crowdsec(registry: &mut Registry, c: &CrowdsecStatus) {
    let decisions = gauge_family(
        registry,
        "crowdsec_decisions",
        "Prefixes enforced from CrowdSec decisions, by origin (crowdsec, cscli, CAPI, lists...)",
    );
    for (origin, n) in &c.decisions {
        decisions
            .get_or_create(&labels(&[("origin", origin)]))
            .set(*n as i64);
    }
    let pulls = counter_family(
        registry,
        "crowdsec_pulls",
        "Pulls of the Local API's decision stream, by outcome",
    );
    pulls
        .get_or_create(&labels(&[("outcome", "ok")]))
        .inc_by(c.pulls);
    pulls
        .get_or_create(&labels(&[("outcome", "error")]))
        .inc_by(c.pull_errors);
    let ignored = counter_family(
        registry,
        "crowdsec_decisions_ignored",
        "Decisions not enforced, by why (type:captcha, scope:country, malformed...)",
    );
    for (why, n) in &c.ignored {
        ignored.get_or_create(&labels(&[("why", why)])).inc_by(*n);
    }
    let shared = counter_family(
        registry,
        "crowdsec_bans_shared",
        "This node's bans posted to the Local API for the other nodes, by outcome",
    );
    shared
        .get_or_create(&labels(&[("outcome", "ok")]))
        .inc_by(c.bans_shared);
    shared
        .get_or_create(&labels(&[("outcome", "error")]))
        .inc_by(c.share_errors);
    gauge(
        registry,
        "crowdsec_decisions_over_capacity",
        "Decisions pulled but not enforced because the decision maps are full (raise capacity.decisions)",
        c.over_capacity as u64,
    );
    gauge(
        registry,
        "crowdsec_last_pull_timestamp_seconds",
        "Unix time of the last pull that succeeded (0: none yet)",
        c.last_success_unix.unwrap_or(0),
    );
    gauge(
        registry,
        "crowdsec_stale_since_timestamp_seconds",
        "Unix time since which the decisions in force may be out of date (the Local API is \
         failing or not reached yet); 0 while in sync",
        c.stale_since_unix.unwrap_or(0),
    );
}

fn render_lists(registry: &mut Registry, lists: &[ListStatus]) {
    let families = [
        (
            "list_entries",
            "Entries of an IP list in force, by list and the name its hits count under",
        ),
        (
            "list_bad_lines",
            "Lines of an IP list's copy that are not addresses or CIDRs (skipped)",
        ),
        (
            "list_read_timestamp_seconds",
            "Unix time the list's copy in force was read or fetched (0: no copy yet)",
        ),
        (
            "list_failing_since_timestamp_seconds",
            "Unix time since which reads of the list fail (its copy in force stays); 0 while they succeed",
        ),
    ]
    .map(|(name, help)| gauge_family(registry, name, help));
    for list in lists {
        let labels = labels(&[("list", &list.list), ("name", &list.name)]);
        let values = [
            list.entries as u64,
            list.bad_lines as u64,
            list.read_unix.unwrap_or(0),
            list.failing_since_unix.unwrap_or(0),
        ];
        for (family, value) in families.iter().zip(values) {
            family.get_or_create(&labels).set(value as i64);
        }
    }
}

pub fn render(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("portcullis");

    let packets = counter_family(
        &mut registry,
        "packets",
        "Packets by final verdict and the reason for it",
    );
    for reason in Reason::ALL {
        let verdict = reason.action().name();
        packets
            .get_or_create(&labels(&[("reason", reason.name()), ("verdict", verdict)]))
            .inc_by(s.counters.verdict(reason));
    }
    let shadow = counter_family(
        &mut registry,
        "shadow_hits",
        "Packets a shadow-mode entry or rule would have dropped (they passed)",
    );
    // Every reason a shadow-mode entry or rule can stand for (malformed frames cannot).
    let refusals = Reason::ALL
        .into_iter()
        .filter(|r| r.action() != Action::Pass && *r != Reason::Malformed);
    for reason in refusals {
        shadow
            .get_or_create(&labels(&[("reason", reason.name())]))
            .inc_by(s.counters.shadowed(reason));
    }
    let malformed = counter_family(
        &mut registry,
        "malformed",
        "Malformed frames (dropped, reason malformed) by what was wrong with them",
    );
    for cause in MalformedCause::ALL {
        malformed
            .get_or_create(&labels(&[("cause", cause.name())]))
            .inc_by(s.counters.malformed(cause));
    }
    let rules = counter_family(
        &mut registry,
        "rule_packets",
        "Packets per rule or deny name, by outcome",
    );
    let routes = counter_family(
        &mut registry,
        "route_requests",
        "HTTP requests per route, by outcome: passed (within its rate), refused (the \
         connection reset), shadowed (would have been refused)",
    );
    let responses = counter_family(
        &mut registry,
        "response_matches",
        "Server responses counted per response rule (toward its client's ban); the packets \
         its bans refuse are in portcullis_rule_packets_total",
    );
    for (name, c) in &s.rules {
        // A response rule passes no packets: what it counts are responses.
        let response_rule = s.responses.contains(name);
        let passed = if response_rule { 0 } else { c.passed };
        for (outcome, value) in [
            ("passed", passed),
            ("dropped", c.dropped),
            ("shadowed", c.shadowed),
        ] {
            rules
                .get_or_create(&labels(&[("rule", name), ("outcome", outcome)]))
                .inc_by(value);
        }
        if response_rule {
            responses
                .get_or_create(&labels(&[("rule", name)]))
                .inc_by(c.passed);
        }
        if s.routes.contains(name) {
            for (outcome, value) in [
                ("passed", c.passed),
                ("refused", c.dropped),
                ("shadowed", c.shadowed),
            ] {
                routes
                    .get_or_create(&labels(&[("route", name), ("outcome", outcome)]))
                    .inc_by(value);
            }
        }
    }
    let interfaces = counter_family(
        &mut registry,
        "interface_packets",
        "Packets per interface, by verdict",
    );
    for (name, c) in &s.interfaces {
        for (verdict, value) in [("pass", c.passed), ("drop", c.dropped)] {
            interfaces
                .get_or_create(&labels(&[("interface", name), ("verdict", verdict)]))
                .inc_by(value);
        }
    }
    let events = counter_family(
        &mut registry,
        "events",
        "Drop and shadow events, by what became of them",
    );
    for (outcome, value) in [
        ("written", s.counters.events_written),
        ("suppressed", s.counters.events_suppressed),
        ("lost", s.counters.events_lost),
    ] {
        events
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc_by(value);
    }
    counter(
        &mut registry,
        "output_lines_unwritten",
        "Event and summary lines the agent could not write to stdout (closed or failing)",
        s.lines_unwritten,
    );
    let errors = counter_family(
        &mut registry,
        "runtime_errors",
        "Errors the agent met while running and carried on after, by what failed",
    );
    for (what, value) in &s.runtime_errors {
        errors
            .get_or_create(&labels(&[("what", what)]))
            .inc_by(*value);
    }
    gauge(
        &mut registry,
        "bans_active",
        "Bans in force (escalation and blocks)",
        (s.bans_active + s.blocks_active) as u64,
    );
    counter(
        &mut registry,
        "bans_failed",
        "Escalation bans not stored because the bans map was full",
        s.counters.bans_failed,
    );
    let entries = gauge_family(
        &mut registry,
        "map_entries",
        "Entries in the policy and state maps",
    );
    let capacity = gauge_family(&mut registry, "map_capacity", "Entries the maps can hold");
    for (map, used, cap) in [
        ("allow", s.allow_entries, s.capacity.cidrs),
        ("deny", s.deny_entries, s.capacity.cidrs),
        ("bans", s.bans_active, s.capacity.bans),
        ("blocks", s.blocks_active, s.capacity.blocks),
        (
            "buckets",
            s.buckets,
            agent_common::buckets::room(s.capacity.sources),
        ),
        ("rules", s.named_rules, s.capacity.rules),
    ] {
        entries
            .get_or_create(&labels(&[("map", map)]))
            .set(used as i64);
        capacity
            .get_or_create(&labels(&[("map", map)]))
            .set(cap as i64);
    }
    counter(
        &mut registry,
        "bucket_evictions",
        "Token buckets replaced by a new source's in a full set",
        s.counters.bucket_evictions,
    );
    gauge(
        &mut registry,
        "map_count_age_seconds",
        "Seconds since the bans, blocks and buckets in map_entries were counted (on a \
         thread of its own, about every second; longer apart while the bucket map is large)",
        s.census_age_secs,
    );
    counter(
        &mut registry,
        "unadmitted_packets",
        "Rate-limited packets of sources without a bucket yet: first packets within a rule's \
         burst window, which passed and left a mark in the admission sketch (a flood of \
         one-packet, spoofed sources counts here)",
        s.counters.unadmitted,
    );
    gauge(
        &mut registry,
        "policy_version",
        "Version of the policy in force",
        s.policy_version,
    );
    gauge(
        &mut registry,
        "policy_file_valid",
        "1 when the policy file is what is in force, 0 while it is invalid or unreadable and an earlier version enforces",
        u64::from(s.policy_file_valid),
    );
    counter(
        &mut registry,
        "policy_apply_failures",
        "Policy applies refused or failed (the previous policy stayed)",
        s.apply_failures,
    );
    if let Some(crowdsec) = &s.crowdsec {
        render_crowdsec(&mut registry, crowdsec);
    }
    render_lists(&mut registry, &s.lists);
    if s.bpf_stats_enabled {
        let run_time = counter_family(
            &mut registry,
            "program_run_time_ns",
            "Time the kernel spent in the program (needs BPF statistics on: --bpf-stats or kernel.bpf_stats_enabled=1)",
        );
        let runs = counter_family(
            &mut registry,
            "program_runs",
            "Program runs (needs BPF statistics on: --bpf-stats or kernel.bpf_stats_enabled=1)",
        );
        for p in &s.programs {
            let l = labels(&[("interface", &p.interface), ("hook", &p.hook)]);
            run_time.get_or_create(&l).inc_by(p.run_time_ns);
            runs.get_or_create(&l).inc_by(p.run_count);
        }
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels_and_totals() {
        let mut counters = Counters::default();
        counters.verdicts[Reason::Denied as usize] = 7;
        counters.shadow[Reason::RateLimited as usize] = 2;
        counters.events_suppressed = 5;
        counters.buckets_created = 10;
        counters.bucket_evictions = 4;
        counters.unadmitted = 3;
        let text = render(&Snapshot {
            counters,
            rules: vec![
                (
                    "login".into(),
                    RuleCounters {
                        passed: 1,
                        dropped: 2,
                        shadowed: 0,
                    },
                ),
                (
                    "auth-failures".into(),
                    RuleCounters {
                        passed: 11,
                        dropped: 4,
                        shadowed: 0,
                    },
                ),
            ],
            routes: ["login".to_string()].into(),
            responses: ["auth-failures".to_string()].into(),
            interfaces: vec![(
                "eth0".into(),
                IfaceCounters {
                    passed: 3,
                    dropped: 7,
                },
            )],
            bans_active: 1,
            blocks_active: 2,
            allow_entries: 0,
            deny_entries: 4,
            named_rules: 7,
            buckets: 6,
            census_age_secs: 1,
            capacity: Capacity {
                sources: 100,
                cidrs: 1000,
                bans: 10,
                blocks: 20,
                rules: 1000,
                decisions: 30,
            },
            policy_version: 3,
            policy_file_valid: true,
            apply_failures: 1,
            runtime_errors: vec![("ban sweep".into(), 2)],
            lines_unwritten: 9,
            programs: vec![],
            bpf_stats_enabled: false,
            crowdsec: Some(CrowdsecStatus {
                lapi_url: "http://127.0.0.1:8080".into(),
                pulls: 12,
                pull_errors: 3,
                last_success_unix: Some(1_700_000_000),
                stale_since_unix: Some(1_700_000_005),
                last_error: Some("refused".into()),
                decisions: [("cscli".to_string(), 2), ("crowdsec".to_string(), 5)].into(),
                ignored: [("type:captcha".to_string(), 1)].into(),
                bans_shared: 4,
                share_errors: 1,
                last_share_error: None,
                over_capacity: 0,
            }),
            lists: vec![ListStatus {
                list: "https://lists.example/drop.txt".into(),
                name: "spamhaus".into(),
                entries: 1024,
                bad_lines: 2,
                read_unix: Some(1_700_000_100),
                failing_since_unix: Some(1_700_000_200),
                ..ListStatus::default()
            }],
        });
        for line in [
            "portcullis_packets_total{reason=\"denied\",verdict=\"drop\"} 7",
            "portcullis_packets_total{reason=\"allowed\",verdict=\"pass\"} 0",
            "portcullis_shadow_hits_total{reason=\"rate_limited\"} 2",
            "portcullis_rule_packets_total{rule=\"login\",outcome=\"dropped\"} 2",
            "portcullis_route_requests_total{route=\"login\",outcome=\"refused\"} 2",
            "portcullis_response_matches_total{rule=\"auth-failures\"} 11",
            "portcullis_rule_packets_total{rule=\"auth-failures\",outcome=\"passed\"} 0",
            "portcullis_rule_packets_total{rule=\"auth-failures\",outcome=\"dropped\"} 4",
            "portcullis_interface_packets_total{interface=\"eth0\",verdict=\"drop\"} 7",
            "portcullis_events_total{outcome=\"suppressed\"} 5",
            "portcullis_map_entries{map=\"deny\"} 4",
            "portcullis_map_capacity{map=\"buckets\"} 128",
            "portcullis_map_entries{map=\"blocks\"} 2",
            "portcullis_map_capacity{map=\"blocks\"} 20",
            "portcullis_map_entries{map=\"rules\"} 7",
            "portcullis_map_capacity{map=\"rules\"} 1000",
            "portcullis_bans_active 3",
            "portcullis_bucket_evictions_total 4",
            "portcullis_unadmitted_packets_total 3",
            "portcullis_map_count_age_seconds 1",
            "portcullis_policy_version 3",
            "portcullis_policy_apply_failures_total 1",
            "portcullis_runtime_errors_total{what=\"ban sweep\"} 2",
            "portcullis_output_lines_unwritten_total 9",
            "portcullis_crowdsec_decisions{origin=\"crowdsec\"} 5",
            "portcullis_crowdsec_pulls_total{outcome=\"error\"} 3",
            "portcullis_crowdsec_decisions_ignored_total{why=\"type:captcha\"} 1",
            "portcullis_crowdsec_last_pull_timestamp_seconds 1700000000",
            "portcullis_crowdsec_bans_shared_total{outcome=\"ok\"} 4",
            "portcullis_crowdsec_stale_since_timestamp_seconds 1700000005",
            "portcullis_list_entries{list=\"https://lists.example/drop.txt\",name=\"spamhaus\"} 1024",
            "portcullis_list_bad_lines{list=\"https://lists.example/drop.txt\",name=\"spamhaus\"} 2",
            "portcullis_list_read_timestamp_seconds{list=\"https://lists.example/drop.txt\",name=\"spamhaus\"} 1700000100",
            "portcullis_list_failing_since_timestamp_seconds{list=\"https://lists.example/drop.txt\",name=\"spamhaus\"} 1700000200",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("program_run"), "BPF stats are off");
    }
}
