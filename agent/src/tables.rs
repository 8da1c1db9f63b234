//! The policy as the kernel's map contents: LPM entries, port and class rule tables, rule
//! configurations, the route trie, under the ids and epochs `RuleIds` gives each rule.

use std::{collections::BTreeMap, sync::OnceLock};

use agent_common::{
    ACL_ALLOW, AclEntry, BLOCK_EPOCH, BLOCK_RULE, CLASS_COUNT, CLASS_ICMP, CLASS_OTHER, CLASS_TCP,
    CLASS_UDP, CLOCK_COARSE, CLOCK_PRECISE, EVASION_RULE, PortRules, RuleConfig, Settings,
    http::{
        HTTP_LENIENT, HTTP_STRICT, ROUTE_DENY, ROUTE_KEY_BYTES, ROUTE_LIMIT, ROUTE_LIMIT_DROP,
        RouteEntry, StatusRules,
    },
    port_key, rule_id_count,
};
use ipnet::IpNet;

use crate::{
    policy::{
        Count, Limit, ListAction, Mode, Policy, Protocol, RateLimit,
        http::{Http, OverLimit, ResponseRule, Route, RouteAction},
    },
    routes,
    rule_ids::RuleIds,
};

/// An LPM key: prefix length and address bytes in network order.
pub type Prefix4 = (u32, [u8; 4]);
pub type Prefix6 = (u32, [u8; 16]);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    /// Allow and deny entries of one address, in one hash map per family, and the wider
    /// ones in one trie per family (see `AclEntry`).
    pub acl_ip_v4: BTreeMap<[u8; 4], AclEntry>,
    pub acl_ip_v6: BTreeMap<[u8; 16], AclEntry>,
    pub acl_v4: BTreeMap<Prefix4, AclEntry>,
    pub acl_v6: BTreeMap<Prefix6, AclEntry>,
    pub port_rules: BTreeMap<u32, PortRules>,
    pub class_rules: [PortRules; CLASS_COUNT as usize],
    /// Rule configurations by id; deny groups have an id (for counters) but no entry here.
    pub rules: BTreeMap<u32, RuleConfig>,
    /// The route trie: (prefix bits, method and target bytes) to the route.
    pub routes: BTreeMap<(u32, [u8; ROUTE_KEY_BYTES]), RouteEntry>,
    /// Response rules by the status codes they count.
    pub statuses: BTreeMap<u32, StatusRules>,
    pub settings: Settings,
}

fn mask_v4(prefix: u8) -> u32 {
    let host_order = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from_ne_bytes(host_order.to_be_bytes())
}

fn mask_v6(prefix: u8) -> [u32; 4] {
    let host_order = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    let bytes = host_order.to_be_bytes();
    std::array::from_fn(|i| u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()))
}

/// The inert rule `portcullis block` bans point at: enforced, never changing, no rate.
fn block_rule() -> RuleConfig {
    RuleConfig {
        mode: Mode::Enforce.code(),
        epoch: BLOCK_EPOCH,
        prefix_v4: 32,
        prefix_v6: 128,
        mask_v4: mask_v4(32),
        mask_v6: mask_v6(128),
        ..RuleConfig::default()
    }
}

/// The kernel's configuration of a rate limit or a rate-limited route.
fn limit_config(limit: &Limit, mode: Mode) -> RuleConfig {
    let capacity_ns = limit.burst * limit.interval_ns;
    let tick_ns = coarse_tick_ns();
    RuleConfig {
        interval_ns: limit.interval_ns,
        capacity_ns,
        ban_window_ns: limit.ban.map_or(0, |b| b.within_ns),
        ban_for_ns: limit.ban.map_or(0, |b| b.for_ns),
        ban_after: limit.ban.map_or(0, |b| b.after),
        mode: mode.code(),
        epoch: 0,
        prefix_v4: limit.prefix_v4 as u32,
        prefix_v6: limit.prefix_v6 as u32,
        mask_v4: mask_v4(limit.prefix_v4),
        mask_v6: mask_v6(limit.prefix_v6),
        clock: if coarse_clock_suffices(limit.interval_ns, capacity_ns, tick_ns) {
            CLOCK_COARSE
        } else {
            CLOCK_PRECISE
        },
        // A tick beyond u32 (over 4 s) is no tick the kernel has: 0 turns the shortcut off.
        tick_ns: u32::try_from(tick_ns).unwrap_or(0),
        ..aggregation(limit)
    }
}

/// Whether a bucket may read the coarse clock (the time of the last tick, a fraction of
/// the precise clock's cost), which lags the precise one by up to a tick (`tick_ns`). On a
/// lagging clock the long-run rate is the same; within a window a bucket may pass up to a
/// tick's worth of packets more (tick / interval) and refuse a packet that comes within a
/// tick of the bucket having room. Room in the burst for eight ticks beyond one packet
/// keeps both under an eighth of the burst; tighter rules keep the precise clock.
pub fn coarse_clock_suffices(interval_ns: u64, capacity_ns: u64, tick_ns: u64) -> bool {
    tick_ns > 0 && capacity_ns.saturating_sub(interval_ns) >= tick_ns.saturating_mul(8)
}

/// The coarse clock's step (the kernel's tick), or 0 if it cannot be read.
fn coarse_tick_ns() -> u64 {
    static TICK_NS: OnceLock<u64> = OnceLock::new();
    *TICK_NS.get_or_init(|| {
        let mut resolution = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_getres writes one timespec, which outlives the call.
        if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut resolution) } != 0 {
            return 0;
        }
        (resolution.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(resolution.tv_nsec as u64)
    })
}

/// The rule's ban aggregation; a family widens only to a prefix wider than its groups.
fn aggregation(limit: &Limit) -> RuleConfig {
    let Some(aggregate) = limit.ban.map(|ban| ban.aggregate).filter(|a| a.after > 0) else {
        return RuleConfig::default();
    };
    let v4 = if aggregate.prefix_v4 < limit.prefix_v4 {
        aggregate.prefix_v4
    } else {
        0
    };
    let v6 = if aggregate.prefix_v6 < limit.prefix_v6 {
        aggregate.prefix_v6
    } else {
        0
    };
    RuleConfig {
        aggregate_after: aggregate.after,
        aggregate_prefix_v4: u32::from(v4),
        aggregate_prefix_v6: u32::from(v6),
        aggregate_mask_v4: mask_v4(v4),
        aggregate_mask_v6: mask_v6(v6),
        ..RuleConfig::default()
    }
}

/// The kernel's configuration of a route: its rate limit, or for a denied route only its
/// mode (no rate: the route entry says it is refused).
fn route_config(route: &Route) -> RuleConfig {
    match &route.action {
        RouteAction::Limit(limit) => limit_config(limit, route.mode),
        RouteAction::Deny => RuleConfig {
            mode: route.mode.code(),
            ..RuleConfig::default()
        },
    }
}

/// The kernel's configuration of a response rule: a limit without a rate, whose ban counts
/// responses instead of packets over the rate.
fn response_config(rule: &ResponseRule) -> RuleConfig {
    let limit = Limit {
        interval_ns: 0,
        burst: 0,
        prefix_v4: rule.prefix_v4,
        prefix_v6: rule.prefix_v6,
        ban: Some(rule.ban),
    };
    limit_config(&limit, rule.mode)
}

fn classes(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Tcp => &[CLASS_TCP],
        Protocol::Udp => &[CLASS_UDP],
        Protocol::Icmp => &[CLASS_ICMP],
        Protocol::Any => &[CLASS_TCP, CLASS_UDP, CLASS_ICMP, CLASS_OTHER],
    }
}

fn slot(rules: &mut PortRules, count: Count) -> &mut u32 {
    match count {
        Count::Packets => &mut rules.packet_rule,
        Count::Connections => &mut rules.connection_rule,
    }
}

/// Builds the map contents for `policy`, updating `ids`.
pub fn build(policy: &Policy, ids: &mut RuleIds, cpus: u32) -> Tables {
    let mut wanted: Vec<String> = Vec::new();
    let list_names = policy.lists.iter().filter_map(|list| match &list.action {
        ListAction::Deny { name, .. } => Some(name.as_str()),
        ListAction::Allow => None,
    });
    for name in policy.deny.iter().map(|d| &*d.name).chain(list_names) {
        if !wanted.iter().any(|w| w == name) {
            wanted.push(name.to_string());
        }
    }
    for rule in &policy.rate_limits {
        wanted.push(rule.name.clone());
    }
    let http = policy.http.as_ref();
    for route in http.iter().flat_map(|http| &http.routes) {
        wanted.push(route.name.clone());
    }
    for rule in http.iter().flat_map(|http| &http.responses) {
        wanted.push(rule.name.clone());
    }
    ids.assign(&wanted, rule_id_count(policy.capacity.rules));

    let mut tables = Tables::default();
    tables.rules.insert(BLOCK_RULE, block_rule());
    // Validation and `lists::expand` keep allow and deny apart (no prefix in both, no deny
    // inside an allow).
    let allow = AclEntry {
        rule: 0,
        mode: ACL_ALLOW,
    };
    let deny = policy.deny.iter().map(|deny| {
        let entry = AclEntry {
            rule: ids.id(&deny.name),
            mode: deny.mode.code(),
        };
        (deny.net, entry)
    });
    let listed = policy
        .lists
        .iter()
        .zip(&policy.listed)
        .flat_map(|(list, nets)| {
            let entry = match &list.action {
                ListAction::Allow => allow,
                ListAction::Deny { name, mode } => AclEntry {
                    rule: ids.id(name),
                    mode: mode.code(),
                },
            };
            nets.iter().map(move |net| (*net, entry))
        });
    let declared = policy.allow.iter().map(|net| (*net, allow)).chain(deny);
    for (net, entry) in declared.chain(listed) {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                tables.acl_ip_v4.insert(n.addr().octets(), entry);
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                tables.acl_ip_v6.insert(n.addr().octets(), entry);
            }
            IpNet::V4(n) => {
                tables
                    .acl_v4
                    .insert((n.prefix_len().into(), n.addr().octets()), entry);
            }
            IpNet::V6(n) => {
                tables
                    .acl_v6
                    .insert((n.prefix_len().into(), n.addr().octets()), entry);
            }
        }
    }

    // Least specific first, so more specific rules overwrite: every protocol, then one
    // protocol, then ports. Validation guarantees no two rules of a kind share a level.
    let mut ordered: Vec<&RateLimit> = policy.rate_limits.iter().collect();
    ordered.sort_by_key(|r| match (r.protocol, r.ports.is_empty()) {
        (Protocol::Any, _) => 0,
        (_, true) => 1,
        (_, false) => 2,
    });
    for rule in ordered {
        let id = ids.id(&rule.name);
        let mut config = limit_config(&rule.limit, rule.mode);
        config.epoch = ids.epoch(&rule.name, &config);
        tables.rules.insert(id, config);
        if rule.ports.is_empty() {
            for &class in classes(rule.protocol) {
                *slot(&mut tables.class_rules[class as usize], rule.count) = id;
            }
            continue;
        }
        for &class in classes(rule.protocol) {
            for &(first, last) in &rule.ports {
                for port in first..=last {
                    // A port entry hides its class entry, so it starts from the class's
                    // rules (all in place by now, thanks to the ordering above).
                    let inherited = tables.class_rules[class as usize];
                    let entry = tables
                        .port_rules
                        .entry(port_key(class, port))
                        .or_insert(inherited);
                    *slot(entry, rule.count) = id;
                }
            }
        }
    }
    if let Some(http) = http {
        add_http(&mut tables, http, ids);
    }
    tables.settings = Settings {
        events_per_cpu_per_sec: policy.events_per_second.div_ceil(cpus.max(1)),
        bucket_set_mask: agent_common::buckets::sets(policy.capacity.sources) - 1,
    };
    tables
}

/// HTTP ports (their port entries say so, inheriting the TCP class's rules where no rate
/// limit names the port), route rules, the route trie, and response rules by status.
fn add_http(tables: &mut Tables, http: &Http, ids: &mut RuleIds) {
    let kind = if http.strict.is_some() {
        HTTP_STRICT
    } else {
        HTTP_LENIENT
    };
    for &port in &http.ports {
        let inherited = tables.class_rules[CLASS_TCP as usize];
        tables
            .port_rules
            .entry(port_key(CLASS_TCP, port))
            .or_insert(inherited)
            .http = kind;
    }
    // `http-evasion`: only its mode; it has no rate, and makes no bans.
    if let Some(mode) = http.strict {
        let evasion = RuleConfig {
            mode: mode.code(),
            epoch: BLOCK_EPOCH,
            ..RuleConfig::default()
        };
        tables.rules.insert(EVASION_RULE, evasion);
    }
    for route in &http.routes {
        let mut config = route_config(route);
        config.epoch = ids.epoch(&route.name, &config);
        tables.rules.insert(ids.id(&route.name), config);
    }
    for (key, index) in routes::compile(&http.routes) {
        let route = &http.routes[index];
        let entry = RouteEntry {
            rule: ids.id(&route.name),
            kind: match (&route.action, route.over_limit) {
                (RouteAction::Deny, _) => ROUTE_DENY,
                (RouteAction::Limit(_), OverLimit::Reset) => ROUTE_LIMIT,
                (RouteAction::Limit(_), OverLimit::Drop) => ROUTE_LIMIT_DROP,
            },
        };
        tables.routes.insert((key.bits, key.data), entry);
    }
    for rule in &http.responses {
        let id = ids.id(&rule.name);
        let mut config = response_config(rule);
        config.epoch = ids.epoch(&rule.name, &config);
        tables.rules.insert(id, config);
        for &status in &rule.statuses {
            let slots = &mut tables.statuses.entry(u32::from(status)).or_default().rules;
            // Validation leaves a free slot for every status of every rule.
            if let Some(free) = slots.iter_mut().find(|slot| **slot == 0) {
                *free = id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy;

    fn tables(yaml: &str, ids: &mut RuleIds) -> Tables {
        build(&policy::parse(Path::new("t.yaml"), yaml).unwrap(), ids, 2)
    }

    #[test]
    fn buckets_read_the_coarse_clock_only_with_room_for_eight_ticks() {
        const MS: u64 = 1_000_000;
        let tick = 4 * MS;
        // (rate interval, burst, coarse?)
        let cases = [
            (10 * MS, 20, true),      // 100/s burst 20: 190 ms of room
            (10 * MS, 4, false),      // 100/s burst 4: 30 ms, under 8 ticks (32 ms)
            (10 * MS, 1, false),      // burst 1: no room, every tick counts
            (MS, 33, true),           // 1000/s burst 33: 32 ms, exactly 8 ticks
            (MS, 32, false),          // 31 ms
            (100_000, 100, false),    // 10,000/s burst 100: 9.9 ms
            (1, 1_000_000_000, true), // a rule that never runs dry
        ];
        for (interval, burst, coarse) in cases {
            assert_eq!(
                coarse_clock_suffices(interval, interval * burst, tick),
                coarse,
                "interval {interval} ns, burst {burst}"
            );
        }
        // A tick that cannot be read: the precise clock.
        assert!(!coarse_clock_suffices(10 * MS, 200 * MS, 0));
        // The rule the kernel gets says which.
        let mut ids = RuleIds::default();
        let t = tables(
            "rate_limits:\n  - {name: roomy, protocol: udp, rate: 100/s, burst: 20}\n  - {name: tight, protocol: udp, ports: [53], rate: 100/s, burst: 1}\n",
            &mut ids,
        );
        let clock_of = |name: &str| t.rules[&ids.id(name)].clock;
        assert_eq!(clock_of("tight"), CLOCK_PRECISE);
        // The tick goes with every rule: a precise one uses it to skip the clock while
        // its bucket is surely empty.
        assert_eq!(
            u64::from(t.rules[&ids.id("tight")].tick_ns),
            coarse_tick_ns()
        );
        if coarse_tick_ns() > 0 && coarse_tick_ns() <= 20 * MS {
            assert_eq!(clock_of("roomy"), CLOCK_COARSE);
        }
    }

    #[test]
    fn prefix_masks_are_network_order() {
        let cases: &[(u8, [u8; 4])] = &[
            (0, [0, 0, 0, 0]),
            (8, [255, 0, 0, 0]),
            (20, [255, 255, 240, 0]),
            (24, [255, 255, 255, 0]),
            (32, [255, 255, 255, 255]),
        ];
        for &(prefix, bytes) in cases {
            assert_eq!(mask_v4(prefix).to_ne_bytes(), bytes, "/{prefix}");
        }
        let bytes = |m: [u32; 4]| m.iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>();
        assert_eq!(bytes(mask_v6(0)), vec![0; 16]);
        assert_eq!(bytes(mask_v6(64)), [vec![255; 8], vec![0; 8]].concat());
        assert_eq!(bytes(mask_v6(56)), [vec![255; 7], vec![0; 9]].concat());
        assert_eq!(bytes(mask_v6(128)), vec![255; 16]);
    }

    #[test]
    fn token_bucket_arithmetic() {
        let mut ids = RuleIds::default();
        let t = tables(
            "rate_limits:\n  - {name: a, protocol: udp, rate: 6000/m, burst: 50}\n  - {name: b, protocol: tcp, rate: 3/s}\n",
            &mut ids,
        );
        let a = t.rules[&ids.id("a")];
        assert_eq!(a.interval_ns, 10_000_000);
        assert_eq!(a.capacity_ns, 500_000_000);
        let b = t.rules[&ids.id("b")];
        assert_eq!(b.interval_ns, 333_333_333);
        assert_eq!(
            b.capacity_ns,
            3 * 333_333_333,
            "default burst is the rate's count"
        );
        assert_eq!(t.settings.events_per_cpu_per_sec, 500, "1000/s over 2 CPUs");
    }

    #[test]
    fn port_entries_take_the_most_specific_rule_of_each_kind() {
        let mut ids = RuleIds::default();
        let t = tables(
            "rate_limits:\n  - {name: web, protocol: tcp, ports: [80], rate: 1/s}\n  - {name: all, protocol: any, rate: 1/s}\n  - {name: conns, protocol: tcp, count: connections, rate: 1/s}\n",
            &mut ids,
        );
        let (web, all, conns) = (ids.id("web"), ids.id("all"), ids.id("conns"));
        assert_eq!(
            t.port_rules[&port_key(CLASS_TCP, 80)],
            PortRules {
                packet_rule: web,
                connection_rule: conns,
                http: 0,
            }
        );
        assert_eq!(t.port_rules.len(), 1);
        assert_eq!(
            t.class_rules[CLASS_TCP as usize],
            PortRules {
                packet_rule: all,
                connection_rule: conns,
                http: 0,
            }
        );
        assert_eq!(
            t.class_rules[CLASS_UDP as usize],
            PortRules {
                packet_rule: all,
                connection_rule: 0,
                http: 0,
            }
        );
        assert_eq!(
            t.class_rules[CLASS_OTHER as usize],
            PortRules {
                packet_rule: all,
                connection_rule: 0,
                http: 0,
            }
        );
    }
    #[test]
    fn ids_and_epochs_survive_unchanged_rules_and_mode_switches() {
        let mut ids = RuleIds::default();
        let rule = |burst: u32, mode: &str| {
            format!(
                "rate_limits:\n  - {{name: a, protocol: udp, rate: 1/s, burst: {burst}, mode: {mode}}}\n  - {{name: b, protocol: tcp, rate: 1/s}}\n"
            )
        };
        let first = tables(&rule(5, "enforce"), &mut ids);
        let (a, b) = (ids.id("a"), ids.id("b"));
        let same = tables(&rule(5, "shadow"), &mut ids);
        assert_eq!((ids.id("a"), ids.id("b")), (a, b));
        assert_eq!(
            same.rules[&a].epoch, first.rules[&a].epoch,
            "a mode switch keeps state"
        );
        assert_eq!(same.rules[&a].mode, Mode::Shadow.code());
        let changed = tables(&rule(6, "enforce"), &mut ids);
        assert_ne!(
            changed.rules[&a].epoch, first.rules[&a].epoch,
            "a changed rule starts fresh"
        );
        assert_eq!(changed.rules[&b].epoch, first.rules[&b].epoch);
    }

    #[test]
    fn http_ports_routes_and_their_rules() {
        let mut ids = RuleIds::default();
        let t = tables(
            "rate_limits:\n  - {name: syn, protocol: tcp, count: connections, rate: 10/s}\n\
             http:\n  ports: [80]\n  routes:\n\
             \x20   - {name: login, methods: [POST], path: /api/login, rate: 5/m, mode: shadow}\n\
             \x20   - {name: hidden, path: /admin/, deny: true, mode: shadow}\n",
            &mut ids,
        );
        // The HTTP port keeps the TCP class's rules and says it carries HTTP, strictly
        // (the default), with `http-evasion` enforced.
        let port = t.port_rules[&port_key(CLASS_TCP, 80)];
        assert_eq!(
            (port.connection_rule, port.http),
            (ids.id("syn"), HTTP_STRICT),
            "{port:?}"
        );
        assert_eq!(t.rules[&EVASION_RULE].mode, Mode::Enforce.code());
        assert_eq!(t.class_rules[CLASS_TCP as usize].http, 0);
        let login = t.rules[&ids.id("login")];
        assert_eq!(login.interval_ns, 12_000_000_000);
        assert_eq!(login.mode, Mode::Shadow.code());
        let hidden = t.rules[&ids.id("hidden")];
        assert_eq!((hidden.interval_ns, hidden.mode), (0, Mode::Shadow.code()));
        // POST /api/login with 3 segment ends; /admin/ for every method, as it is.
        assert_eq!(t.routes.len(), 3 + agent_common::http::Method::ALL.len());
        let kinds: Vec<(u32, u32)> = t.routes.values().map(|e| (e.rule, e.kind)).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|(rule, kind)| *rule == ids.id("login") && *kind == ROUTE_LIMIT)
                .count(),
            3
        );
        assert!(kinds.contains(&(ids.id("hidden"), ROUTE_DENY)));
    }

    #[test]
    fn response_rules_by_status() {
        let mut ids = RuleIds::default();
        let t = tables(
            "http:\n  ports: [80]\n  responses:\n\
             \x20   - {name: auth, status: [401, 403], prefix_v4: 24, ban: {after: 10, within: 1m, for: 15m}}\n\
             \x20   - {name: watch, status: [401], ban: {after: 3, for: 1h}, mode: shadow}\n",
            &mut ids,
        );
        let (auth, watch) = (ids.id("auth"), ids.id("watch"));
        assert_eq!(t.statuses[&401].rules, [auth, watch, 0, 0]);
        assert_eq!(t.statuses[&403].rules, [auth, 0, 0, 0]);
        assert_eq!(t.statuses.len(), 2);
        // A response rule has no rate: only its ban, grouping and mode.
        let config = t.rules[&auth];
        assert_eq!(config.interval_ns, 0);
        assert_eq!(
            (config.ban_after, config.ban_window_ns, config.ban_for_ns),
            (10, 60_000_000_000, 900_000_000_000)
        );
        assert_eq!((config.prefix_v4, config.mask_v4), (24, mask_v4(24)));
        assert_eq!(t.rules[&watch].mode, Mode::Shadow.code());
    }
}
