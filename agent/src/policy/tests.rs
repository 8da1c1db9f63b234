//! Policy parsing and validation: every bad input gets the right problem on the right line.

use std::path::Path;

use super::{
    Aggregate, Ban, Capacity, Count, DenyRule, Limit, Mode, Policy, PolicyError, Problem, Protocol,
    RateLimit, http::RouteAction, parse, units::UnitError,
};

fn check(yaml: &str) -> Result<Policy, PolicyError> {
    parse(Path::new("p.yaml"), yaml)
}

#[test]
fn full_policy_parses_with_defaults_filled_in() {
    let policy = check(
        r#"
allow:
  - 10.0.0.0/8
  - 2001:db8::1
deny:
  - 203.0.113.0/24
  - cidr: 198.51.100.0/24
    mode: shadow
    name: watch
rate_limits:
  - name: login
    protocol: tcp
    ports: [443, "8000-8080"]
    count: connections
    rate: 6000/m
    ban: {after: 10, for: 10m}
  - name: udp
    protocol: udp
    rate: 5/s
    burst: 20
    prefix_v4: 24
    prefix_v6: 48
    mode: shadow
events:
  per_second: 50
capacity:
  sources: 1000
"#,
    )
    .unwrap();
    assert_eq!(policy.allow.len(), 2);
    assert_eq!(policy.allow[1].to_string(), "2001:db8::1/128");
    assert_eq!(
        policy.deny,
        vec![
            DenyRule {
                net: "203.0.113.0/24".parse().unwrap(),
                mode: Mode::Enforce,
                name: "deny".into()
            },
            DenyRule {
                net: "198.51.100.0/24".parse().unwrap(),
                mode: Mode::Shadow,
                name: "watch".into()
            },
        ]
    );
    assert_eq!(
        policy.rate_limits[0],
        RateLimit {
            name: "login".into(),
            protocol: Protocol::Tcp,
            ports: vec![(443, 443), (8000, 8080)],
            count: Count::Connections,
            limit: Limit {
                interval_ns: 10_000_000,
                burst: 6000,
                prefix_v4: 32,
                prefix_v6: 64,
                ban: Some(Ban {
                    after: 10,
                    within_ns: 60_000_000_000,
                    for_ns: 600_000_000_000,
                    aggregate: Aggregate {
                        after: 16,
                        prefix_v4: 24,
                        prefix_v6: 48
                    },
                }),
            },
            mode: Mode::Enforce,
        }
    );
    assert_eq!(policy.rate_limits[1].limit.burst, 20);
    assert_eq!(policy.rate_limits[1].limit.prefix_v4, 24);
    assert_eq!(policy.rate_limits[1].mode, Mode::Shadow);
    assert_eq!(policy.events_per_second, 50);
    assert_eq!(
        policy.capacity,
        Capacity {
            sources: 1000,
            cidrs: super::DEFAULT_CIDRS,
            bans: super::DEFAULT_BANS,
            blocks: super::DEFAULT_BLOCKS,
            rules: super::DEFAULT_RULES,
            decisions: super::DEFAULT_DECISIONS,
        }
    );
}

#[test]
fn list_entries_parse_with_their_sources_and_refresh() {
    let policy = check(
        "allow:\n  - 10.0.0.0/8\n  - {list: /etc/portcullis/partners.txt}\ndeny:\n  - 192.0.2.0/24\n  - {list: 'https://www.spamhaus.org/drop/drop.txt', name: spamhaus, refresh: 12h, mode: shadow}\n",
    )
    .unwrap();
    assert_eq!(policy.allow.len(), 1);
    assert_eq!(policy.deny.len(), 1);
    let lists: Vec<(String, String, u64, u32)> = policy
        .lists
        .iter()
        .map(|l| {
            (
                l.source.to_string(),
                l.describe(),
                l.refresh.as_secs(),
                l.line,
            )
        })
        .collect();
    assert_eq!(
        lists,
        vec![
            (
                "/etc/portcullis/partners.txt".to_string(),
                "allow list /etc/portcullis/partners.txt".to_string(),
                3600,
                3
            ),
            (
                "https://www.spamhaus.org/drop/drop.txt".to_string(),
                "deny list https://www.spamhaus.org/drop/drop.txt (spamhaus, shadow)".to_string(),
                43_200,
                6
            ),
        ]
    );
    assert!(policy.listed.is_empty());
}

/// Feeds authenticate in the URL: an error about a list never repeats what it hides.
#[test]
fn list_errors_do_not_show_credentials() {
    for yaml in [
        "deny:\n  - {list: 'https://u:T0KEN@lists.example/d.txt?key=K3Y'}\n  - {list: 'https://v:OTHER@lists.example/d.txt?key=other'}",
        "deny:\n  - {list: 'https://u:T0KEN@[lists.example/d.txt?key=K3Y'}",
        "deny:\n  - {list: 'https://u:T0KEN@lists.example/d.txt?key=K3Y', refresh: 1ms}",
    ] {
        let text = check(yaml).unwrap_err().to_string();
        assert!(!text.contains("T0KEN") && !text.contains("K3Y"), "{text}");
    }
}

#[test]
fn empty_file_is_an_empty_policy() {
    for text in ["", "\n", "# nothing yet\n", "{}"] {
        let policy = check(text).unwrap();
        assert!(policy.allow.is_empty() && policy.deny.is_empty() && policy.rate_limits.is_empty());
        assert_eq!(policy.events_per_second, super::DEFAULT_EVENTS_PER_SECOND);
    }
}

/// (policy text, line of the error, what the problem must be)
type Case = (&'static str, u32, fn(&Problem) -> bool);

#[test]
fn invalid_policies_name_the_line_and_the_problem() {
    let cases: &[Case] = &[
        ("allow: [10.0.0.0/33]", 1, |p| {
            matches!(p, Problem::Unit(UnitError::CidrSyntax(_)))
        }),
        ("allow:\n  - 10.0.0.0/8\n  - nonsense", 3, |p| {
            matches!(p, Problem::Unit(UnitError::CidrSyntax(_)))
        }),
        ("deny:\n  - 10.1.2.3/8", 2, |p| {
            matches!(p, Problem::Unit(UnitError::CidrHostBits { .. }))
        }),
        ("allow: [10.0.0.0/8, 10.0.0.0/8]", 1, |p| {
            matches!(p, Problem::Duplicate { list: "allow", .. })
        }),
        (
            "deny:\n  - 10.0.0.0/8\n  - cidr: 10.0.0.0/8\n    mode: shadow",
            3,
            |p| {
                matches!(
                    p,
                    Problem::Duplicate {
                        list: "deny",
                        first_line: 2,
                        ..
                    }
                )
            },
        ),
        // Two entries repeated: the first repeat in file order is named, with the line
        // it repeats (the check sorts the entries, so order must come out right).
        (
            "deny:\n  - 203.0.113.0/24\n  - 10.0.0.0/8\n  - 10.0.0.0/8\n  - 203.0.113.0/24\n  - 10.0.0.0/8",
            4,
            |p| {
                matches!(
                    p,
                    Problem::Duplicate {
                        list: "deny",
                        first_line: 3,
                        ..
                    }
                )
            },
        ),
        ("allow: [10.0.0.0/8]\ndeny: [10.1.0.0/16]", 2, |p| {
            matches!(p, Problem::DenyCoveredByAllow { allow_line: 1, .. })
        }),
        (
            "deny:\n  - {list: relative/drop.txt}",
            2,
            |p| matches!(p, Problem::ListSource(s) if s == "relative/drop.txt"),
        ),
        (
            "deny:\n  - {list: 'ftp://lists.example/drop.txt'}",
            2,
            |p| matches!(p, Problem::ListSource(_)),
        ),
        (
            "deny:\n  - {list: 'https://u:T0KEN@lists.example/d.txt?k=1'}\n  - {list: 'https://v:OTHER@lists.example/d.txt?k=2'}",
            3,
            |p| matches!(p, Problem::ListsShownAlike { first_line: 2, .. }),
        ),
        (
            "deny:\n  - {list: 'https://u:T0KEN@[lists.example/d.txt'}",
            2,
            |p| matches!(p, Problem::ListUrl),
        ),
        (
            "allow:\n  - {list: /etc/drop.txt}\ndeny:\n  - {list: /etc/drop.txt}",
            4,
            |p| matches!(p, Problem::ListTwice { first_line: 2, .. }),
        ),
        ("deny:\n  - {list: /etc/drop.txt, refresh: 1h}", 2, |p| {
            matches!(p, Problem::RefreshOfFile { .. })
        }),
        (
            "deny:\n  - {list: 'https://lists.example/d.txt', refresh: 500ms}",
            2,
            |p| matches!(p, Problem::RefreshTooShort { .. }),
        ),
        (
            "deny:\n  - {list: 'https://lists.example/d.txt', refresh: soon}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::DurationSyntax(_))),
        ),
        ("deny:\n  - {list: /etc/drop.txt, name: Bad Name}", 2, |p| {
            matches!(p, Problem::BadName(_))
        }),
        ("allow: [10.0.0.0/8]\ndeny: [10.0.0.0/8]", 2, |p| {
            matches!(p, Problem::DenyCoveredByAllow { .. })
        }),
        ("allow: ['::/0']\ndeny: ['2001:db8::/32']", 2, |p| {
            matches!(p, Problem::DenyCoveredByAllow { .. })
        }),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 0/s}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::RateZero(_))),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 10}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::RateSyntax(_))),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, burst: 0}",
            2,
            |p| matches!(p, Problem::BurstZero { .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/h, burst: 1000000000000}",
            2,
            |p| matches!(p, Problem::BurstTooLarge { .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, ports: [0], rate: 1/s}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::PortSyntax(_))),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, ports: [\"90-80\"], rate: 1/s}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::PortRangeReversed(_))),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: icmp, ports: [80], rate: 1/s}",
            2,
            |p| matches!(p, Problem::PortsNotApplicable { .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, count: connections, rate: 1/s}",
            2,
            |p| matches!(p, Problem::ConnectionsNeedTcp { .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, prefix_v4: 33}",
            2,
            |p| matches!(p, Problem::PrefixV4 { value: 33, .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, prefix_v6: 129}",
            2,
            |p| matches!(p, Problem::PrefixV6 { value: 129, .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, ban: {after: 0, for: 1m}}",
            2,
            |p| matches!(p, Problem::BanAfterZero { .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, ban: {after: 1, for: 0s}}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::DurationZero(_))),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, ban: {after: 1, for: 213503d}}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::DurationTooLong(_))),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, ban: {after: 1, within: 400d, for: 1h}}",
            2,
            |p| matches!(p, Problem::Unit(UnitError::DurationTooLong(_))),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, ban: {after: 1, for: 1h, aggregate: {prefix_v4: 8}}}",
            2,
            |p| {
                matches!(
                    p,
                    Problem::AggregatePrefix {
                        field: "ban.aggregate.prefix_v4",
                        value: 8,
                        min: 16,
                        ..
                    }
                )
            },
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, ban: {after: 1, for: 1h, aggregate: {prefix_v6: 129}}}",
            2,
            |p| {
                matches!(
                    p,
                    Problem::AggregatePrefix {
                        value: 129,
                        max: 128,
                        ..
                    }
                )
            },
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, prefix_v4: 0, ban: {after: 1, for: 1h}}",
            2,
            |p| {
                matches!(
                    p,
                    Problem::BanPrefixTooWide {
                        field: "prefix_v4",
                        value: 0,
                        max: 16,
                        ..
                    }
                )
            },
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, prefix_v6: 24, ban: {after: 1, for: 1h}}",
            2,
            |p| {
                matches!(
                    p,
                    Problem::BanPrefixTooWide {
                        field: "prefix_v6",
                        value: 24,
                        max: 32,
                        ..
                    }
                )
            },
        ),
        ("capacity: {blocks: 0}", 1, |p| {
            matches!(
                p,
                Problem::Capacity {
                    field: "blocks",
                    ..
                }
            )
        }),
        (
            "rate_limits:\n  - {name: Login, protocol: udp, rate: 1/s}",
            2,
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s}\n  - {name: a, protocol: tcp, rate: 1/s}",
            3,
            |p| matches!(p, Problem::DuplicateName { first_line: 2, .. }),
        ),
        (
            "deny:\n  - {cidr: 10.0.0.0/8, name: login}\nrate_limits:\n  - {name: login, protocol: udp, rate: 1/s}",
            4,
            |p| matches!(p, Problem::DuplicateName { first_line: 2, .. }),
        ),
        (
            "rate_limits:\n  - {name: deny, protocol: udp, rate: 1/s}",
            2,
            |p| matches!(p, Problem::DuplicateName { .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: tcp, ports: [80], rate: 1/s}\n  - {name: b, protocol: tcp, ports: [\"70-90\"], rate: 1/s}",
            3,
            |p| {
                matches!(
                    p,
                    Problem::Overlap {
                        count: "packets",
                        ..
                    }
                )
            },
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s}\n  - {name: b, protocol: udp, rate: 2/s}",
            3,
            |p| matches!(p, Problem::Overlap { .. }),
        ),
        (
            "rate_limits:\n  - {name: a, protocol: any, rate: 1/s}\n  - {name: b, protocol: any, rate: 2/s}",
            3,
            |p| matches!(p, Problem::Overlap { .. }),
        ),
        ("capacity: {cidrs: 1}\ndeny: [1.1.1.1, 2.2.2.2]", 1, |p| {
            matches!(
                p,
                Problem::TooManyCidrs {
                    list: "deny",
                    count: 2,
                    ..
                }
            )
        }),
        ("capacity: {sources: 0}", 1, |p| {
            matches!(
                p,
                Problem::Capacity {
                    field: "sources",
                    ..
                }
            )
        }),
        ("capacity: {bans: 999999999}", 1, |p| {
            matches!(p, Problem::Capacity { field: "bans", .. })
        }),
        ("capacity: {rules: 65537}", 1, |p| {
            matches!(p, Problem::Capacity { field: "rules", .. })
        }),
        // Four named rules (the unnamed deny group among them) in a table for three, at
        // the capacity section's line.
        (
            "deny: [1.1.1.1]\nrate_limits:\n  - {name: a, protocol: udp, rate: 1/s}\n  - {name: b, protocol: tcp, rate: 1/s}\nhttp:\n  ports: [80]\n  routes:\n    - {name: c, path: /c, deny: true}\ncapacity:\n  rules: 3",
            10,
            |p| {
                matches!(
                    p,
                    Problem::TooManyRules {
                        count: 4,
                        capacity: 3
                    }
                )
            },
        ),
    ];
    for (text, line, want) in cases {
        match check(text) {
            Err(PolicyError::Invalid {
                line: got, problem, ..
            }) => {
                assert!(want(&problem), "{text:?}: unexpected problem {problem:?}");
                assert_eq!(got, *line, "{text:?}: line of {problem}");
            }
            other => panic!("{text:?}: expected a validation error, got {other:?}"),
        }
    }
}

#[test]
fn rules_may_overlap_across_levels_and_count_kinds() {
    let policy = check(
        "rate_limits:\n  - {name: all, protocol: any, rate: 1/s}\n  - {name: tcp, protocol: tcp, rate: 1/s}\n  - {name: web, protocol: tcp, ports: [80], rate: 1/s}\n  - {name: web-conn, protocol: tcp, ports: [80], count: connections, rate: 1/s}\n",
    )
    .unwrap();
    assert_eq!(policy.rate_limits.len(), 4);
}

#[test]
fn syntax_errors_name_line_column_and_what_was_wrong() {
    let cases: &[(&str, u32, &str)] = &[
        ("allow: [10.0.0.0/8\n", 1, "unclosed bracket"),
        ("bogus: 1\n", 1, "unknown field `bogus`"),
        (
            "deny:\n  - {cidr: 10.0.0.0/8, mod: shadow}\n",
            2,
            "unknown field `mod`",
        ),
        (
            "rate_limits:\n  - {name: a, protocol: sctp, rate: 1/s}\n",
            2,
            "sctp",
        ),
        (
            "rate_limits:\n  - {name: a, protocol: udp}\n",
            2,
            "missing field `rate`",
        ),
        ("deny:\n  - {cidr: 10.0.0.0/8, mode: block}\n", 2, "block"),
        ("rate_limits: 5\n", 1, "sequence"),
        (
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, ban: {after: 1, for: 1h, aggregate: {count: 3}}}\n",
            2,
            "unknown field `count`",
        ),
        ("allow: [10.0.0.0/8]\n\t- x\n", 2, ""),
        (
            "deny:\n  - {cidr: 10.0.0.0/8, list: /etc/x}\n",
            2,
            "give either cidr or list",
        ),
        ("deny:\n  - {name: x}\n", 2, "give either cidr or list"),
        (
            "deny:\n  - {cidr: 10.0.0.0/8, refresh: 1h}\n",
            2,
            "refresh applies to a list",
        ),
        (
            "allow:\n  - {list: /etc/x, name: partners}\n",
            2,
            "allow entries have no name or mode",
        ),
    ];
    for (text, line, needle) in cases {
        match check(text) {
            Err(PolicyError::Syntax {
                line: got, message, ..
            }) => {
                assert_eq!(got, *line, "{text:?}: {message}");
                assert!(
                    message.contains(needle),
                    "{text:?}: message {message:?} lacks {needle:?}"
                );
                assert!(
                    !message.starts_with("error"),
                    "{text:?}: {message:?} repeats the prefix"
                );
            }
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn errors_display_file_and_line() {
    let err = check("allow:\n  - 10.0.0.0/33\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.yaml:2: invalid CIDR '10.0.0.0/33': expected an IPv4 or IPv6 address with an optional /prefix"
    );
}

const HTTP: &str = r#"
http:
  ports: [80, 8080]
  routes:
    - name: login
      methods: [POST]
      path: /api/login
      rate: 5/m
      burst: 5
      ban: {after: 20, within: 10m, for: 1h}
    - name: hidden
      path: /admin
      deny: true
      mode: shadow
  responses:
    - name: auth-failures
      status: [401, 403]
      ban: {after: 10, within: 1m, for: 15m}
"#;

#[test]
fn the_http_section_parses_with_defaults_filled_in() {
    let http = check(HTTP).unwrap().http.expect("an http section");
    assert_eq!(http.ports, vec![80, 8080]);
    assert_eq!(http.strict, Some(Mode::Enforce), "strict by default");
    for (written, strict) in [
        ("true", Some(Mode::Enforce)),
        ("shadow", Some(Mode::Shadow)),
        ("false", None),
    ] {
        let text = format!("http:\n  ports: [80]\n  strict: {written}\n");
        let http = check(&text).unwrap().http.unwrap();
        assert_eq!(http.strict, strict, "strict: {written}");
    }
    assert_eq!(http.routes.len(), 2);
    let login = &http.routes[0];
    assert_eq!(login.methods, vec![agent_common::http::Method::Post]);
    assert_eq!(login.path, "/api/login");
    match &login.action {
        RouteAction::Limit(limit) => {
            assert_eq!((limit.interval_ns, limit.burst), (12_000_000_000, 5));
            assert_eq!((limit.prefix_v4, limit.prefix_v6), (32, 64));
            assert_eq!(limit.ban.unwrap().after, 20);
        }
        other => panic!("login: {other:?}"),
    }
    let hidden = &http.routes[1];
    assert!(hidden.methods.is_empty(), "every method");
    assert_eq!(
        (&hidden.action, hidden.mode),
        (&RouteAction::Deny, Mode::Shadow)
    );
    let failures = &http.responses[0];
    assert_eq!(failures.statuses, vec![401, 403]);
    assert_eq!(failures.ban.for_ns, 15 * 60 * 1_000_000_000);
    assert!(check("").unwrap().http.is_none());
}

/// Tells whether a validation problem is the one a case expects.
type IsProblem = fn(&Problem) -> bool;

#[test]
fn invalid_http_sections_name_the_line_and_the_problem() {
    let route =
        |fields: &str| format!("http:\n  ports: [80]\n  routes:\n    - {{name: r, {fields}}}\n");
    let response =
        |fields: &str| format!("http:\n  ports: [80]\n  responses:\n    - {{name: r, {fields}}}\n");
    let cases: Vec<(String, u32, IsProblem)> = vec![
        ("http:\n  ports: [0]\n".into(), 2, |p| {
            matches!(p, Problem::HttpPort { value: 0 })
        }),
        ("http:\n  ports: [70000]\n".into(), 2, |p| {
            matches!(p, Problem::HttpPort { value: 70000 })
        }),
        ("http:\n  ports: [80, 80]\n".into(), 2, |p| {
            matches!(p, Problem::HttpPortTwice { port: 80 })
        }),
        (
            "http:\n  routes:\n    - {name: r, path: /x, deny: true}\n".into(),
            2,
            |p| matches!(p, Problem::HttpNoPorts),
        ),
        (route("path: x, deny: true"), 4, |p| {
            matches!(p, Problem::RoutePath { why: "must start with /", .. })
        }),
        (route(&format!("path: /{}, deny: true", "a".repeat(191))), 4, |p| {
            matches!(p, Problem::RoutePath { .. })
        }),
        (route("path: \"/a b\", deny: true"), 4, |p| {
            matches!(p, Problem::RoutePath { .. })
        }),
        (route("path: \"/a?b\", deny: true"), 4, |p| {
            matches!(p, Problem::RoutePath { .. })
        }),
        (route("path: /x, methods: [get], deny: true"), 4, |p| {
            matches!(p, Problem::UnknownMethod { .. })
        }),
        (route("path: /x, methods: [GET, GET], deny: true"), 4, |p| {
            matches!(p, Problem::MethodTwice { method: "GET", .. })
        }),
        (route("path: /x"), 4, |p| matches!(p, Problem::RouteAction { .. })),
        (route("path: /x, deny: true, rate: 1/s"), 4, |p| {
            matches!(p, Problem::RouteAction { .. })
        }),
        (route("path: /x, deny: true, burst: 3"), 4, |p| {
            matches!(p, Problem::RouteAction { .. })
        }),
        (route("path: /x, rate: 1/s, burst: 0"), 4, |p| {
            matches!(p, Problem::BurstZero { .. })
        }),
        (
            route("path: /x, rate: 1/s, prefix_v4: 8, ban: {after: 1, for: 1h}"),
            4,
            |p| matches!(p, Problem::BanPrefixTooWide { .. }),
        ),
        (
            "http:\n  ports: [80]\n  routes:\n    - {name: a, path: /x, deny: true}\n    - {name: b, path: /x, methods: [GET], deny: true}\n    - {name: c, path: /x, deny: true}\n".into(),
            6,
            |p| matches!(p, Problem::DuplicateRoute { first_line: 4, .. }),
        ),
        (
            "rate_limits:\n  - {name: r, protocol: udp, rate: 1/s}\nhttp:\n  ports: [80]\n  routes:\n    - {name: r, path: /x, deny: true}\n".into(),
            6,
            |p| matches!(p, Problem::DuplicateName { first_line: 2, .. }),
        ),
        (response("status: [99], ban: {after: 1, for: 1h}"), 4, |p| {
            matches!(p, Problem::ResponseStatus { value: 99, .. })
        }),
        (response("status: [404, 404], ban: {after: 1, for: 1h}"), 4, |p| {
            matches!(p, Problem::ResponseStatuses { .. })
        }),
        (response("status: [], ban: {after: 1, for: 1h}"), 4, |p| {
            matches!(p, Problem::ResponseStatuses { .. })
        }),
        (response("status: [401], ban: {after: 0, for: 1h}"), 4, |p| {
            matches!(p, Problem::BanAfterZero { .. })
        }),
        (route("path: /x, deny: true, over_limit: drop"), 4, |p| {
            matches!(p, Problem::OverLimit { value, .. } if value == "drop")
        }),
        (route("path: /x, rate: 1/s, over_limit: later"), 4, |p| {
            matches!(p, Problem::OverLimit { value, .. } if value == "later")
        }),
        ("http:\n  ports: [80]\n  strict: maybe\n".into(), 2, |p| {
            matches!(p, Problem::HttpStrict { value } if value == "maybe")
        }),
        (
            format!(
                "http:\n  ports: [80]\n  responses:\n{}",
                (1..=5)
                    .map(|i| format!("    - {{name: r{i}, status: [401, 50{i}], ban: {{after: 1, for: 1h}}}}\n"))
                    .collect::<String>()
            ),
            8,
            |p| matches!(p, Problem::StatusInTooManyRules { status: 401, max: 4, .. }),
        ),
    ];
    for (text, line, want) in &cases {
        match check(text) {
            Err(PolicyError::Invalid {
                line: got, problem, ..
            }) => {
                assert!(want(&problem), "{text:?}: unexpected problem {problem:?}");
                assert_eq!(got, *line, "{text:?}: line of {problem}");
            }
            other => panic!("{text:?}: expected a validation error, got {other:?}"),
        }
    }
    // A response rule without a ban is a syntax error (the field is required).
    assert!(matches!(
        check(&response("status: [401]")),
        Err(PolicyError::Syntax { .. })
    ));
}

/// `http-evasion` is switched like a rule while `http.strict` is on, and unknown when off.
#[test]
fn http_evasion_switches_mode_while_strict() {
    let modes: std::collections::BTreeMap<String, Mode> =
        [("http-evasion".to_string(), Mode::Shadow)].into();
    let on = check("http:\n  ports: [80]\n").unwrap();
    let switched = on.with_modes(&modes).unwrap();
    assert_eq!(switched.http.unwrap().strict, Some(Mode::Shadow));
    let off = check("http:\n  ports: [80]\n  strict: false\n").unwrap();
    assert!(off.with_modes(&modes).is_err());
}

#[test]
fn routes_fill_capacity_rules_and_no_more() {
    let policy = |routes: usize| {
        let mut text = String::from("capacity: {rules: 10000}\nhttp:\n  ports: [80]\n  routes:\n");
        for i in 0..routes {
            text.push_str(&format!("    - {{name: r{i}, path: /r/{i}, deny: true}}\n"));
        }
        text
    };
    let fits = check(&policy(10_000)).expect("10,000 routes in a table for 10,000");
    assert_eq!(fits.http.unwrap().routes.len(), 10_000);
    match check(&policy(10_001)) {
        Err(PolicyError::Invalid {
            line: 1, problem, ..
        }) => assert_eq!(
            problem,
            Problem::TooManyRules {
                count: 10_001,
                capacity: 10_000
            }
        ),
        other => panic!("expected too many rules, got {other:?}"),
    }
}
