//! From the file's structures to a `Policy`: every value parsed, every limit checked, and
//! every contradiction reported with the line it is on.

use std::{collections::HashMap, path::Path};

use agent_common::MAX_RULES;
use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::{
    Aggregate, Ban, CLI_BLOCK, Capacity, Count, DEFAULT_BAN_WINDOW_NS, DEFAULT_BANS,
    DEFAULT_BLOCKS, DEFAULT_CIDRS, DEFAULT_EVENTS_PER_SECOND, DEFAULT_SOURCES, DenyRule, Policy,
    PolicyError, Protocol, RateLimit, UNNAMED_DENY,
    file::{AggregateSection, PolicyFile, RateLimitItem},
    units::{self, UnitError},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("{net} is listed twice in {list} (first on line {first_line})")]
    Duplicate {
        net: IpNet,
        list: &'static str,
        first_line: u32,
    },
    #[error(
        "deny entry {deny} can never apply: allow entry {allow} on line {allow_line} covers it, and allow is checked first"
    )]
    DenyCoveredByAllow {
        deny: IpNet,
        allow: IpNet,
        allow_line: u32,
    },
    #[error("invalid name '{0}': use 1 to 64 characters from a-z, 0-9, '-' and '_'")]
    BadName(String),
    #[error("name '{name}' is already used on line {first_line}")]
    DuplicateName { name: String, first_line: u32 },
    #[error("rule '{rule}': ports only apply to tcp and udp, not {protocol:?}")]
    PortsNotApplicable { rule: String, protocol: Protocol },
    #[error("rule '{rule}': count: connections needs protocol: tcp")]
    ConnectionsNeedTcp { rule: String },
    #[error(
        "rules '{first}' and '{second}' both count {count} for {scope}; a packet is counted by at most one rule of each kind"
    )]
    Overlap {
        first: String,
        second: String,
        count: &'static str,
        scope: String,
    },
    #[error("rule '{rule}': prefix_v4 must be between 0 and 32, got {value}")]
    PrefixV4 { rule: String, value: u8 },
    #[error("rule '{rule}': prefix_v6 must be between 0 and 128, got {value}")]
    PrefixV6 { rule: String, value: u8 },
    #[error("rule '{rule}': burst must be at least 1")]
    BurstZero { rule: String },
    #[error("rule '{rule}': burst {burst} at this rate is more credit than the kernel can hold")]
    BurstTooLarge { rule: String, burst: u64 },
    #[error("rule '{rule}': ban.after must be at least 1")]
    BanAfterZero { rule: String },
    #[error(
        "rule '{rule}': {field} must be between {min} and {max}, got {value}; one abusive network must not ban a wider one"
    )]
    AggregatePrefix {
        rule: String,
        field: &'static str,
        value: u8,
        min: u8,
        max: u8,
    },
    #[error(
        "rule '{rule}': with ban:, {field} must be {max} or longer, got {value}; one abusive source must not ban a whole network"
    )]
    BanPrefixTooWide {
        rule: String,
        field: &'static str,
        value: u8,
        max: u8,
    },
    #[error("{list} has {count} {family} entries, more than capacity.cidrs ({capacity}) allows")]
    TooManyCidrs {
        list: &'static str,
        family: &'static str,
        count: usize,
        capacity: u32,
    },
    #[error("{count} rule and deny names, at most {max} fit in the kernel's rule table")]
    TooManyRules { count: usize, max: u32 },
    #[error("capacity.{field} must be between {min} and {max}, got {value}")]
    Capacity {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
}

/// Upper bounds for `capacity`: far above what a node needs, low enough that a typo cannot
/// ask the kernel for gigabytes.
const MAX_SOURCES: u32 = 16 * 1024 * 1024;
const MAX_CIDRS: u32 = 16 * 1024 * 1024;
const MAX_BANS: u32 = 4 * 1024 * 1024;
const MAX_BLOCKS: u32 = 4 * 1024 * 1024;
/// The widest source groups a rule with `ban:` may use: /16 (IPv4) and /32 (IPv6).
const MIN_BAN_PREFIX_V4: u8 = 16;
const MIN_BAN_PREFIX_V6: u8 = 32;

/// `ban.aggregate`, with its defaults; the wider prefixes obey the ban prefix bounds.
fn aggregate(
    section: Option<&AggregateSection>,
    rule: &dyn Fn() -> String,
) -> Result<Aggregate, Problem> {
    let defaults = Aggregate::default();
    let Some(section) = section else {
        return Ok(defaults);
    };
    let aggregate = Aggregate {
        after: section.after.unwrap_or(defaults.after),
        prefix_v4: section.prefix_v4.unwrap_or(defaults.prefix_v4),
        prefix_v6: section.prefix_v6.unwrap_or(defaults.prefix_v6),
    };
    for (field, value, min, max) in [
        (
            "ban.aggregate.prefix_v4",
            aggregate.prefix_v4,
            MIN_BAN_PREFIX_V4,
            32,
        ),
        (
            "ban.aggregate.prefix_v6",
            aggregate.prefix_v6,
            MIN_BAN_PREFIX_V6,
            128,
        ),
    ] {
        if !(min..=max).contains(&value) {
            return Err(Problem::AggregatePrefix {
                rule: rule(),
                field,
                value,
                min,
                max,
            });
        }
    }
    Ok(aggregate)
}

pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let options = serde_saphyr::options! {
        // Large deny lists (a million CIDRs) are legitimate; the default budget is
        // sized for small configuration files.
        budget: serde_saphyr::budget! {
            max_nodes: 50_000_000,
            max_events: 100_000_000,
        },
    };
    let file: PolicyFile = if text.trim().is_empty() {
        // An empty file is a valid, empty policy: nothing denied, nothing limited.
        serde_saphyr::from_str_with_options("{}", options)
    } else {
        serde_saphyr::from_str_with_options(text, options)
    }
    .map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        PolicyError::Syntax {
            path: path.to_path_buf(),
            line: line as u32,
            column: column as u32,
            message: first_line(&e.to_string()),
        }
    })?;
    Validator { path }.validate(file)
}

/// serde-saphyr renders errors as "error: line L column C: message" followed by a source
/// snippet; the location is reported separately, so keep only the message.
fn first_line(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or_default().trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line.split_once(": ") {
        Some((location, message)) if location.starts_with("line ") => message.to_string(),
        _ => line.to_string(),
    }
}

fn line_of<T>(spanned: &Spanned<T>) -> u32 {
    spanned.referenced.line() as u32
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, line: u32, problem: impl Into<Problem>) -> PolicyError {
        PolicyError::Invalid {
            path: self.path.to_path_buf(),
            line,
            problem: problem.into(),
        }
    }

    fn validate(&self, file: PolicyFile) -> Result<Policy, PolicyError> {
        let capacity = self.capacity(&file)?;
        let allow = self.allow(&file)?;
        let deny = self.deny(&file, &allow)?;
        let rate_limits = self.rate_limits(&file)?;
        self.check_names(&file)?;
        self.check_overlaps(&file, &rate_limits)?;
        let allow: Vec<IpNet> = allow.into_iter().map(|(net, _)| net).collect();
        let deny_nets: Vec<IpNet> = deny.iter().map(|d| d.net).collect();
        for (list, nets) in [("allow", &allow), ("deny", &deny_nets)] {
            for (family, count) in [
                (
                    "IPv4",
                    nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count(),
                ),
                (
                    "IPv6",
                    nets.iter().filter(|n| matches!(n, IpNet::V6(_))).count(),
                ),
            ] {
                if count > capacity.cidrs as usize {
                    return Err(self.invalid(
                        1,
                        Problem::TooManyCidrs {
                            list,
                            family,
                            count,
                            capacity: capacity.cidrs,
                        },
                    ));
                }
            }
        }
        let events_per_second = file
            .events
            .as_ref()
            .map(|e| e.value.per_second)
            .unwrap_or(DEFAULT_EVENTS_PER_SECOND);
        Ok(Policy {
            allow,
            deny,
            rate_limits,
            events_per_second,
            capacity,
        })
    }

    fn capacity(&self, file: &PolicyFile) -> Result<Capacity, PolicyError> {
        let Some(section) = &file.capacity else {
            return Ok(Capacity {
                sources: DEFAULT_SOURCES,
                cidrs: DEFAULT_CIDRS,
                bans: DEFAULT_BANS,
                blocks: DEFAULT_BLOCKS,
            });
        };
        let line = line_of(section);
        let field = |field: &'static str, value: Option<u32>, default: u32, max: u32| {
            let value = value.unwrap_or(default);
            if value == 0 || value > max {
                return Err(self.invalid(
                    line,
                    Problem::Capacity {
                        field,
                        value,
                        min: 1,
                        max,
                    },
                ));
            }
            Ok(value)
        };
        Ok(Capacity {
            sources: field(
                "sources",
                section.value.sources,
                DEFAULT_SOURCES,
                MAX_SOURCES,
            )?,
            cidrs: field("cidrs", section.value.cidrs, DEFAULT_CIDRS, MAX_CIDRS)?,
            bans: field("bans", section.value.bans, DEFAULT_BANS, MAX_BANS)?,
            blocks: field("blocks", section.value.blocks, DEFAULT_BLOCKS, MAX_BLOCKS)?,
        })
    }

    fn allow(&self, file: &PolicyFile) -> Result<Vec<(IpNet, u32)>, PolicyError> {
        let mut seen: HashMap<IpNet, u32> = HashMap::new();
        let mut allow = Vec::with_capacity(file.allow.len());
        for item in &file.allow {
            let line = line_of(item);
            let net = units::parse_cidr(&item.value).map_err(|e| self.invalid(line, e))?;
            if let Some(&first_line) = seen.get(&net) {
                return Err(self.invalid(
                    line,
                    Problem::Duplicate {
                        net,
                        list: "allow",
                        first_line,
                    },
                ));
            }
            seen.insert(net, line);
            allow.push((net, line));
        }
        Ok(allow)
    }

    fn deny(
        &self,
        file: &PolicyFile,
        allow: &[(IpNet, u32)],
    ) -> Result<Vec<DenyRule>, PolicyError> {
        let mut seen: HashMap<IpNet, u32> = HashMap::new();
        let mut deny = Vec::with_capacity(file.deny.len());
        // Allow entries by prefix length, so "is this deny entry inside an allow entry" is
        // at most 129 hash lookups rather than a scan of the allow list.
        let mut allow_by_len: HashMap<u8, HashMap<IpNet, u32>> = HashMap::new();
        for (net, line) in allow {
            allow_by_len
                .entry(net.prefix_len())
                .or_default()
                .insert(*net, *line);
        }
        for item in &file.deny {
            let line = line_of(item);
            let net = units::parse_cidr(&item.value.cidr).map_err(|e| self.invalid(line, e))?;
            if let Some(&first_line) = seen.get(&net) {
                return Err(self.invalid(
                    line,
                    Problem::Duplicate {
                        net,
                        list: "deny",
                        first_line,
                    },
                ));
            }
            seen.insert(net, line);
            for len in 0..=net.prefix_len() {
                let Ok(supernet) = IpNet::new(net.addr(), len).map(|n| n.trunc()) else {
                    continue;
                };
                if let Some(&allow_line) = allow_by_len.get(&len).and_then(|m| m.get(&supernet)) {
                    return Err(self.invalid(
                        line,
                        Problem::DenyCoveredByAllow {
                            deny: net,
                            allow: supernet,
                            allow_line,
                        },
                    ));
                }
            }
            if let Some(name) = &item.value.name {
                check_name(name).map_err(|p| self.invalid(line, p))?;
            }
            deny.push(DenyRule {
                net,
                mode: item.value.mode,
                name: item
                    .value
                    .name
                    .clone()
                    .unwrap_or_else(|| UNNAMED_DENY.to_string()),
            });
        }
        Ok(deny)
    }

    fn rate_limits(&self, file: &PolicyFile) -> Result<Vec<RateLimit>, PolicyError> {
        file.rate_limits
            .iter()
            .map(|item| {
                self.rate_limit(&item.value)
                    .map_err(|p| self.invalid(line_of(item), p))
            })
            .collect()
    }

    fn rate_limit(&self, item: &RateLimitItem) -> Result<RateLimit, Problem> {
        check_name(&item.name)?;
        let rule = || item.name.clone();
        let rate = units::parse_rate(&item.rate)?;
        let ports = item
            .ports
            .iter()
            .map(|p| units::parse_port_range(&p.0))
            .collect::<Result<Vec<_>, _>>()?;
        if !ports.is_empty() && !matches!(item.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(Problem::PortsNotApplicable {
                rule: rule(),
                protocol: item.protocol,
            });
        }
        if item.count == Count::Connections && item.protocol != Protocol::Tcp {
            return Err(Problem::ConnectionsNeedTcp { rule: rule() });
        }
        let burst = item.burst.unwrap_or(rate.count);
        if burst == 0 {
            return Err(Problem::BurstZero { rule: rule() });
        }
        if burst.checked_mul(rate.interval_ns).is_none() {
            return Err(Problem::BurstTooLarge {
                rule: rule(),
                burst,
            });
        }
        let prefix_v4 = item.prefix_v4.unwrap_or(32);
        if prefix_v4 > 32 {
            return Err(Problem::PrefixV4 {
                rule: rule(),
                value: prefix_v4,
            });
        }
        let prefix_v6 = item.prefix_v6.unwrap_or(64);
        if prefix_v6 > 128 {
            return Err(Problem::PrefixV6 {
                rule: rule(),
                value: prefix_v6,
            });
        }
        let ban = match &item.ban {
            None => None,
            Some(ban) => {
                if ban.after == 0 {
                    return Err(Problem::BanAfterZero { rule: rule() });
                }
                for (field, value, max) in [
                    ("prefix_v4", prefix_v4, MIN_BAN_PREFIX_V4),
                    ("prefix_v6", prefix_v6, MIN_BAN_PREFIX_V6),
                ] {
                    if value < max {
                        return Err(Problem::BanPrefixTooWide {
                            rule: rule(),
                            field,
                            value,
                            max,
                        });
                    }
                }
                Some(Ban {
                    after: ban.after,
                    within_ns: match &ban.within {
                        Some(within) => units::parse_duration(within)?,
                        None => DEFAULT_BAN_WINDOW_NS,
                    },
                    for_ns: units::parse_duration(&ban.duration)?,
                    aggregate: aggregate(ban.aggregate.as_ref(), &rule)?,
                })
            }
        };
        Ok(RateLimit {
            name: item.name.clone(),
            protocol: item.protocol,
            ports,
            count: item.count,
            interval_ns: rate.interval_ns,
            burst,
            prefix_v4,
            prefix_v6,
            ban,
            mode: item.mode,
        })
    }

    /// Rule names and deny names share one namespace: they label counters and events.
    /// Deny entries may share a name (a group); a rate limit's name must be its own.
    fn check_names(&self, file: &PolicyFile) -> Result<(), PolicyError> {
        let mut names: HashMap<&str, u32> = HashMap::new();
        names.insert(UNNAMED_DENY, 0);
        names.insert(CLI_BLOCK, 0);
        for item in &file.deny {
            if let Some(name) = &item.value.name {
                names.entry(name).or_insert(line_of(item));
            }
        }
        for item in &file.rate_limits {
            let line = line_of(item);
            if let Some(&first_line) = names.get(item.value.name.as_str()) {
                return Err(self.invalid(
                    line,
                    Problem::DuplicateName {
                        name: item.value.name.clone(),
                        first_line,
                    },
                ));
            }
            names.insert(&item.value.name, line);
        }
        // Id 0 is never used, and the last id is `portcullis block`'s.
        if names.len() > MAX_RULES as usize - 1 {
            return Err(self.invalid(
                1,
                Problem::TooManyRules {
                    count: names.len() - 1,
                    max: MAX_RULES - 2,
                },
            ));
        }
        Ok(())
    }

    /// Two rules of the same count kind may not cover the same traffic at the same level of
    /// detail (a port, a whole protocol, every protocol). Across levels the more specific
    /// rule wins, which is what people expect from "everything, and login more tightly".
    fn check_overlaps(&self, file: &PolicyFile, rules: &[RateLimit]) -> Result<(), PolicyError> {
        // For each (count, protocol): the port ranges claimed so far and by which rule.
        // A rule without ports claims the range (0, 0), which no real port range overlaps.
        type Claims = Vec<(usize, (u16, u16))>;
        let mut claimed: HashMap<(Count, Protocol), Claims> = HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            let ranges = if rule.ports.is_empty() {
                vec![(0, 0)]
            } else {
                rule.ports.clone()
            };
            for range in ranges {
                let others = claimed.entry((rule.count, rule.protocol)).or_default();
                if let Some(&(other, _)) = others
                    .iter()
                    .find(|(_, (a, b))| range.0 <= *b && *a <= range.1)
                {
                    let scope = match (rule.protocol, range) {
                        (Protocol::Any, _) => "every protocol".to_string(),
                        (p, (0, 0)) => format!("all of {}", protocol_name(p)),
                        (p, (a, b)) if a == b => format!("{} port {a}", protocol_name(p)),
                        (p, (a, b)) => format!("{} ports {a}-{b}", protocol_name(p)),
                    };
                    return Err(self.invalid(
                        line_of(&file.rate_limits[index]),
                        Problem::Overlap {
                            first: rules[other].name.clone(),
                            second: rule.name.clone(),
                            count: match rule.count {
                                Count::Packets => "packets",
                                Count::Connections => "connections",
                            },
                            scope,
                        },
                    ));
                }
                others.push((index, range));
            }
        }
        Ok(())
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Any => "any",
    }
}

fn check_name(name: &str) -> Result<(), Problem> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Problem::BadName(name.to_string()))
    }
}
