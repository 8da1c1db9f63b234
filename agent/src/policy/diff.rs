//! What changes between two policies, as lines a person reads: `+` added, `-` removed,
//! `~` changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ipnet::IpNet;

use super::{
    DenyRule, ListSource, Mode, Policy, RateLimit,
    http::{DEFAULT_STRICT, Http},
};

fn rule_fields(rule: &RateLimit) -> Vec<(&'static str, String)> {
    vec![
        ("protocol", format!("{:?}", rule.protocol).to_lowercase()),
        ("ports", format!("{:?}", rule.ports)),
        ("count", format!("{:?}", rule.count).to_lowercase()),
        ("interval_ns", rule.limit.interval_ns.to_string()),
        ("burst", rule.limit.burst.to_string()),
        ("prefix_v4", rule.limit.prefix_v4.to_string()),
        ("prefix_v6", rule.limit.prefix_v6.to_string()),
        ("ban", format!("{:?}", rule.limit.ban)),
        ("mode", rule.mode.name().to_string()),
    ]
}

pub fn diff(old: &Policy, new: &Policy) -> Vec<String> {
    let mut lines = Vec::new();
    // Sets, not list look-ups: allow lists run to a million entries, and this runs on the
    // agent's event loop at every apply.
    let (old_allow, new_allow): (BTreeSet<&IpNet>, BTreeSet<&IpNet>) =
        (old.allow.iter().collect(), new.allow.iter().collect());
    for net in new.allow.iter().filter(|n| !old_allow.contains(n)) {
        lines.push(format!("+ allow {net}"));
    }
    for net in old.allow.iter().filter(|n| !new_allow.contains(n)) {
        lines.push(format!("- allow {net}"));
    }
    let by_net = |p: &Policy| -> BTreeMap<IpNet, DenyRule> {
        p.deny.iter().map(|d| (d.net, d.clone())).collect()
    };
    let (old_deny, new_deny) = (by_net(old), by_net(new));
    for (net, d) in &new_deny {
        match old_deny.get(net) {
            None => lines.push(format!("+ deny {net} ({}, {})", d.name, d.mode.name())),
            Some(o) if o != d => lines.push(format!(
                "~ deny {net}: {} {} -> {} {}",
                o.name,
                o.mode.name(),
                d.name,
                d.mode.name()
            )),
            Some(_) => {}
        }
    }
    for net in old_deny.keys().filter(|n| !new_deny.contains_key(n)) {
        lines.push(format!("- deny {net}"));
    }
    for rule in &new.rate_limits {
        match old.rate_limits.iter().find(|o| o.name == rule.name) {
            None => lines.push(format!("+ rate_limit {}", rule.name)),
            Some(o) => {
                for ((field, before), (_, after)) in
                    rule_fields(o).into_iter().zip(rule_fields(rule))
                {
                    if before != after {
                        lines.push(format!(
                            "~ rate_limit {}: {field} {before} -> {after}",
                            rule.name
                        ));
                    }
                }
            }
        }
    }
    for rule in old
        .rate_limits
        .iter()
        .filter(|o| !new.rate_limits.iter().any(|r| r.name == o.name))
    {
        lines.push(format!("- rate_limit {}", rule.name));
    }
    http_diff(old.http.as_ref(), new.http.as_ref(), &mut lines);
    list_diff(old, new, &mut lines);
    if old.events_per_second != new.events_per_second {
        lines.push(format!(
            "~ events.per_second: {} -> {}",
            old.events_per_second, new.events_per_second
        ));
    }
    if old.capacity != new.capacity {
        lines.push(format!(
            "~ capacity: {:?} -> {:?}",
            old.capacity, new.capacity
        ));
    }
    lines
}

/// The `http:` section's changes: ports and strictness, then routes and response rules by
/// name (a changed one is shown with its whole definition, before and after).
fn http_diff(old: Option<&Http>, new: Option<&Http>, lines: &mut Vec<String>) {
    let ports = |h: Option<&Http>| h.map(|h| h.ports.clone()).unwrap_or_default();
    if ports(old) != ports(new) {
        lines.push(format!(
            "~ http.ports: {:?} -> {:?}",
            ports(old),
            ports(new)
        ));
    }
    let strict = |h: Option<&Http>| match h.map_or(DEFAULT_STRICT, |h| h.strict) {
        None => "false",
        Some(Mode::Enforce) => "true",
        Some(Mode::Shadow) => "shadow",
    };
    if strict(old) != strict(new) {
        lines.push(format!("~ http.strict: {} -> {}", strict(old), strict(new)));
    }
    let routes = |h: Option<&Http>| h.map(|h| h.routes.clone()).unwrap_or_default();
    named_changes("route", &routes(old), &routes(new), |r| &r.name, lines);
    let responses = |h: Option<&Http>| h.map(|h| h.responses.clone()).unwrap_or_default();
    named_changes(
        "response",
        &responses(old),
        &responses(new),
        |r| &r.name,
        lines,
    );
}

/// Lines for items (routes, response rules) matched by name: `+` new, `~` changed (old and
/// new shown), `-` gone.
fn named_changes<T: PartialEq + std::fmt::Debug>(
    kind: &str,
    old: &[T],
    new: &[T],
    name: fn(&T) -> &String,
    lines: &mut Vec<String>,
) {
    for item in new {
        match old.iter().find(|o| name(o) == name(item)) {
            None => lines.push(format!("+ {kind} {}", name(item))),
            Some(o) if o != item => {
                lines.push(format!("~ {kind} {}: {o:?} -> {item:?}", name(item)))
            }
            Some(_) => {}
        }
    }
    for item in old
        .iter()
        .filter(|o| !new.iter().any(|n| name(n) == name(o)))
    {
        lines.push(format!("- {kind} {}", name(item)));
    }
}

/// Lists added, removed or changed, with their entries in force (counts, not the entries:
/// a list holds thousands).
fn list_diff(old: &Policy, new: &Policy, lines: &mut Vec<String>) {
    let entries = |p: &Policy| -> HashMap<ListSource, (String, HashSet<IpNet>)> {
        p.lists
            .iter()
            .zip(p.listed.iter().chain(std::iter::repeat(&Vec::new())))
            .map(|(rule, nets)| {
                (
                    rule.source.clone(),
                    (rule.describe(), nets.iter().copied().collect()),
                )
            })
            .collect()
    };
    let (before, after) = (entries(old), entries(new));
    for rule in &new.lists {
        let (describe, now) = &after[&rule.source];
        match before.get(&rule.source) {
            None => lines.push(format!("+ {describe}: {} entries", now.len())),
            Some((old_describe, then)) => {
                let added = now.difference(then).count();
                let removed = then.difference(now).count();
                if old_describe != describe {
                    lines.push(format!("~ {old_describe} -> {describe}"));
                }
                if added + removed > 0 {
                    lines.push(format!(
                        "~ {describe}: {} -> {} entries (+{added} -{removed})",
                        then.len(),
                        now.len()
                    ));
                }
            }
        }
    }
    for rule in &old.lists {
        if !after.contains_key(&rule.source) {
            lines.push(format!("- {}", rule.describe()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{Mode, parse};

    fn policy(text: &str) -> Policy {
        parse(Path::new("p.yaml"), text).unwrap()
    }

    #[test]
    fn lists_additions_removals_and_changes() {
        let old = policy(
            "allow: [10.0.0.0/8]\ndeny: [192.0.2.0/24, 198.51.100.0/24]\nrate_limits:\n  - {name: a, protocol: udp, rate: 1/s}\n  - {name: b, protocol: tcp, rate: 1/s}\n",
        );
        let new = policy(
            "allow: [10.0.0.0/8, 172.16.0.0/12]\ndeny: [{cidr: 192.0.2.0/24, mode: shadow}]\nrate_limits:\n  - {name: a, protocol: udp, rate: 2/s, burst: 1}\n  - {name: c, protocol: icmp, rate: 1/s}\nevents: {per_second: 5}\n",
        );
        assert_eq!(
            diff(&old, &new),
            vec![
                "+ allow 172.16.0.0/12",
                "~ deny 192.0.2.0/24: deny enforce -> deny shadow",
                "- deny 198.51.100.0/24",
                "~ rate_limit a: interval_ns 1000000000 -> 500000000",
                "+ rate_limit c",
                "- rate_limit b",
                "~ events.per_second: 1000 -> 5",
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    /// A million-entry allow list on each side, all different: with a list look-up per
    /// entry this is 10^12 comparisons (hours); the bound is generous for a debug build.
    #[test]
    fn diffing_million_entry_allow_lists_is_not_quadratic() {
        let list = |first_octet: u32| -> Vec<IpNet> {
            (0..1_000_000u32)
                .map(|i| {
                    let addr = std::net::Ipv4Addr::from((first_octet << 24) | (i << 4));
                    IpNet::V4(ipnet::Ipv4Net::new(addr, 28).unwrap())
                })
                .collect()
        };
        let mut old = policy("");
        let mut new = old.clone();
        old.allow = list(10);
        new.allow = list(11);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(diff(&old, &new).len()));
        let lines = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the diff did not finish in 60 s");
        assert_eq!(lines, 2_000_000);
    }

    #[test]
    fn modes_switch_rules_deny_groups_and_single_entries() {
        let p = policy(
            "deny: [192.0.2.0/24, {cidr: 198.51.100.0/24, name: feed}, {cidr: 203.0.113.0/24, name: feed}]\nrate_limits:\n  - {name: a, protocol: udp, rate: 1/s}\n",
        );
        let modes: BTreeMap<String, Mode> = [
            ("a".to_string(), Mode::Shadow),
            ("feed".to_string(), Mode::Shadow),
            ("192.0.2.0/24".to_string(), Mode::Shadow),
        ]
        .into();
        let switched = p.clone().with_modes(&modes).unwrap();
        assert_eq!(switched.rate_limits[0].mode, Mode::Shadow);
        assert!(switched.deny.iter().all(|d| d.mode == Mode::Shadow));
        let unknown: BTreeMap<String, Mode> = [("nope".to_string(), Mode::Shadow)].into();
        assert_eq!(
            p.with_modes(&unknown).unwrap_err().to_string(),
            "no rate limit, route, response rule, deny name or deny CIDR called 'nope' in the policy in force"
        );
    }

    #[test]
    fn http_routes_are_diffed_and_switched_by_name() {
        let old = policy(
            "http:\n  ports: [80]\n  routes:\n    - {name: login, path: /api/login, rate: 5/m}\n    - {name: gone, path: /old, deny: true}\n",
        );
        let new = policy(
            "http:\n  ports: [80, 8080]\n  routes:\n    - {name: login, path: /api/login, rate: 10/m}\n    - {name: hidden, path: /admin, deny: true}\n",
        );
        let lines = diff(&old, &new);
        assert_eq!(lines[0], "~ http.ports: [80] -> [80, 8080]");
        assert!(lines[1].starts_with("~ route login: "), "{lines:?}");
        assert_eq!(&lines[2..], ["+ route hidden", "- route gone"]);
        let modes: BTreeMap<String, Mode> = [("hidden".to_string(), Mode::Shadow)].into();
        let switched = new.with_modes(&modes).unwrap();
        assert_eq!(switched.http.unwrap().routes[1].mode, Mode::Shadow);
    }
}
