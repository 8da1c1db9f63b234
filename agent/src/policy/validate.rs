//! From the file's structures to a `Policy`: every value parsed, every limit checked, and
//! every contradiction reported with the line it is on.

use std::{
    cell::OnceCell,
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
};

use agent_common::{
    Mode,
    http::{MAX_ROUTE_PATH, Method, RULES_PER_STATUS},
};
use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::{
    Aggregate, Ban, CLI_BLOCK, Capacity, Count, DEFAULT_BAN_WINDOW_NS, DEFAULT_BANS,
    DEFAULT_BLOCKS, DEFAULT_CIDRS, DEFAULT_DECISIONS, DEFAULT_EVENTS_PER_SECOND,
    DEFAULT_LIST_REFRESH, DEFAULT_RULES, DEFAULT_SOURCES, DenyRule, Limit, ListAction, ListRule,
    ListSource, ListUrl, Policy, PolicyError, Protocol, RateLimit, UNNAMED_DENY,
    file::{
        AggregateSection, BanSection, EntryLines, ListTarget, PolicyFile, RateLimitItem,
        ResponseItem, RouteItem, StrictField, Target,
    },
    http::{
        DEFAULT_STRICT, HTTP_EVASION, Http, MAX_RESPONSE_RULES, OverLimit, ResponseRule, Route,
        RouteAction,
    },
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
    #[error("http.ports: {value} is not a TCP port (1-65535)")]
    HttpPort { value: u32 },
    #[error("http.ports lists {port} twice")]
    HttpPortTwice { port: u16 },
    #[error(
        "http: routes and responses need http.ports, the TCP ports that carry plaintext HTTP/1.x"
    )]
    HttpNoPorts,
    #[error("http.{what} has {count} entries, at most {max} are supported")]
    TooManyHttpRules {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("route '{rule}': path {path:?} {why}")]
    RoutePath {
        rule: String,
        path: String,
        why: &'static str,
    },
    #[error("route '{rule}': unknown method {method:?}; methods are {known}")]
    UnknownMethod {
        rule: String,
        method: String,
        known: String,
    },
    #[error("route '{rule}': method {method} is listed twice")]
    MethodTwice { rule: String, method: &'static str },
    #[error(
        "route '{rule}': give either rate (with burst, ban, prefix_v4, prefix_v6 as for rate_limits) or deny: true"
    )]
    RouteAction { rule: String },
    #[error("route '{rule}': {method} {path} is already a route on line {first_line}")]
    DuplicateRoute {
        rule: String,
        method: String,
        path: String,
        first_line: u32,
    },
    #[error("route '{rule}': over_limit is '{value}'; it is reset or drop, on a route with a rate")]
    OverLimit { rule: String, value: String },
    #[error("http.strict is '{value}'; it is true, false or shadow")]
    HttpStrict { value: String },
    #[error("response rule '{rule}': status {value} is not between 100 and 599")]
    ResponseStatus { rule: String, value: u16 },
    #[error("response rule '{rule}': status lists no status, or one twice")]
    ResponseStatuses { rule: String },
    #[error(
        "response rule '{rule}': status {status} is already counted by {max} response rules, the most one status can be"
    )]
    StatusInTooManyRules {
        rule: String,
        status: u16,
        max: usize,
    },
    #[error("{list} has {count} {family} entries, more than capacity.cidrs ({capacity}) allows")]
    TooManyCidrs {
        list: &'static str,
        family: &'static str,
        count: usize,
        capacity: u32,
    },
    #[error(
        "{count} named rules (deny names, rate limits, routes, response rules), more than \
         capacity.rules ({capacity}) allows; raise it (a restart applies it)"
    )]
    TooManyRules { count: usize, capacity: u32 },
    #[error("list '{0}': name an absolute file path or an http:// or https:// URL")]
    ListSource(String),
    #[error("the list URL does not parse as an http(s) URL (not shown: it may hold credentials)")]
    ListUrl,
    #[error(
        "lists {list} (line {first_line}) and this one differ only in credentials or query, \
         which metrics, logs and status never show; add a #fragment to one to tell them apart \
         (it is not sent)"
    )]
    ListsShownAlike { list: String, first_line: u32 },
    #[error("list {list} is named twice (first on line {first_line}); one entry per list")]
    ListTwice { list: String, first_line: u32 },
    #[error("list {list}: refresh applies to URLs; files are watched and read when they change")]
    RefreshOfFile { list: String },
    #[error("list {list}: refresh must be at least 1s")]
    RefreshTooShort { list: String },
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
const MAX_RULES: u32 = 65_536;
const MAX_DECISIONS: u32 = 16 * 1024 * 1024;
/// The widest source groups a rule with `ban:` may use: /16 (IPv4) and /32 (IPv6).
const MIN_BAN_PREFIX_V4: u8 = 16;
const MIN_BAN_PREFIX_V6: u8 = 32;

/// An entry naming a list: where it comes from and how often it is fetched again.
fn list_rule(
    list: &str,
    refresh: Option<&str>,
    action: ListAction,
    capacity_cidrs: u32,
    line: u32,
) -> Result<ListRule, Problem> {
    let is_url = list.starts_with("http://") || list.starts_with("https://");
    let source = if is_url {
        // The text may hold credentials: an error names the line, not the text.
        ListSource::Url(ListUrl::parse(list).ok_or(Problem::ListUrl)?)
    } else if Path::new(list).is_absolute() {
        ListSource::File(list.into())
    } else {
        return Err(Problem::ListSource(list.to_string()));
    };
    let refresh = match (refresh, &source) {
        (None, _) => DEFAULT_LIST_REFRESH,
        (Some(_), ListSource::File(_)) => {
            return Err(Problem::RefreshOfFile {
                list: source.to_string(),
            });
        }
        (Some(text), ListSource::Url(_)) => {
            let refresh = std::time::Duration::from_nanos(units::parse_duration(text)?);
            if refresh < std::time::Duration::from_secs(1) {
                return Err(Problem::RefreshTooShort {
                    list: source.to_string(),
                });
            }
            refresh
        }
    };
    Ok(ListRule {
        source,
        action,
        refresh,
        capacity_cidrs,
        line,
    })
}

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
    let file: PolicyFile = from_yaml(text).map_err(|e| {
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
    Validator {
        path,
        text,
        entry_lines: OnceCell::new(),
    }
    .validate(file)
}

/// `text` parsed as YAML into `T`; an empty file is an empty map.
fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        // Large deny lists (a million CIDRs) are legitimate; the default budget is
        // sized for small configuration files.
        budget: serde_saphyr::budget! {
            max_nodes: 50_000_000,
            max_events: 100_000_000,
        },
    };
    if text.trim().is_empty() {
        // An empty file is a valid, empty policy: nothing denied, nothing limited.
        serde_saphyr::from_str_with_options("{}", options)
    } else {
        serde_saphyr::from_str_with_options(text, options)
    }
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

/// The network of a CIDR entry, or why its text is not one.
fn cidr_of(cidr: &Result<IpNet, Box<str>>) -> Result<IpNet, UnitError> {
    match cidr {
        Ok(net) => Ok(*net),
        Err(text) => units::parse_cidr(text),
    }
}

/// How many of `nets` are IPv4.
fn ipv4_count<'a>(nets: impl Iterator<Item = &'a IpNet>) -> usize {
    nets.filter(|n| matches!(n, IpNet::V4(_))).count()
}

/// Where a parsed item starts, for errors.
trait OnLine {
    fn line(&self) -> u32;
}

impl<T> OnLine for Spanned<T> {
    fn line(&self) -> u32 {
        self.referenced.line() as u32
    }
}

/// Where an item of the file is: its line, or for an allow or deny entry, which keeps no
/// line (see `EntryLines`), its list and index.
#[derive(Clone, Copy, Debug)]
enum Place {
    Line(u32),
    Allow(usize),
    Deny(usize),
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    /// The entries' lines, parsed on the first error that names an entry.
    entry_lines: OnceCell<EntryLines>,
}

impl Validator<'_> {
    /// The line `place` is on (0 if the file cannot be read again, which cannot happen: it
    /// parsed once already).
    fn line(&self, place: Place) -> u32 {
        let lines = || {
            self.entry_lines
                .get_or_init(|| from_yaml(self.text).unwrap_or_default())
        };
        let entry = |entries: &[Spanned<_>], index: usize| {
            entries.get(index).map_or(0, |entry| entry.line())
        };
        match place {
            Place::Line(line) => line,
            Place::Allow(index) => entry(&lines().allow, index),
            Place::Deny(index) => entry(&lines().deny, index),
        }
    }

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
        let lists = self.lists(&file, capacity.cidrs)?;
        let rate_limits = self.rate_limits(&file)?;
        let http = self.http(&file)?;
        self.check_names(&file, &capacity)?;
        self.check_overlaps(&file, &rate_limits)?;
        let allow: Vec<IpNet> = allow.into_iter().map(|(net, _)| net).collect();
        let counts = [
            ("allow", ipv4_count(allow.iter()), allow.len()),
            ("deny", ipv4_count(deny.iter().map(|d| &d.net)), deny.len()),
        ];
        for (list, v4, all) in counts {
            for (family, count) in [("IPv4", v4), ("IPv6", all - v4)] {
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
            http,
            lists,
            listed: Vec::new(),
        })
    }

    /// The allow and deny entries that name a list: allow lists first, each source once.
    fn lists(&self, file: &PolicyFile, capacity_cidrs: u32) -> Result<Vec<ListRule>, PolicyError> {
        let allow = file
            .allow
            .iter()
            .enumerate()
            .map(|(index, item)| (Place::Allow(index), &item.target, ListAction::Allow));
        let deny = file.deny.iter().enumerate().map(|(index, item)| {
            let action = ListAction::Deny {
                name: item
                    .name
                    .clone()
                    .unwrap_or_else(|| UNNAMED_DENY.to_string()),
                mode: item.mode,
            };
            (Place::Deny(index), &item.target, action)
        });
        let mut places: HashMap<ListSource, Place> = HashMap::new();
        // Two lists that show alike would share their metrics and status rows.
        let mut shown: HashMap<String, Place> = HashMap::new();
        let mut lists = Vec::new();
        for (place, target, action) in allow.chain(deny) {
            let Target::List(target) = target else {
                continue;
            };
            let line = self.line(place);
            let ListTarget { list, refresh } = &**target;
            let rule = list_rule(list, refresh.as_deref(), action, capacity_cidrs, line)
                .map_err(|p| self.invalid(line, p))?;
            if let Some(&first) = places.get(&rule.source) {
                let list = rule.source.to_string();
                let first_line = self.line(first);
                return Err(self.invalid(line, Problem::ListTwice { list, first_line }));
            }
            let list = rule.source.to_string();
            if let Some(&first) = shown.get(&list) {
                let first_line = self.line(first);
                return Err(self.invalid(line, Problem::ListsShownAlike { list, first_line }));
            }
            shown.insert(list, place);
            places.insert(rule.source.clone(), place);
            lists.push(rule);
        }
        Ok(lists)
    }

    fn capacity(&self, file: &PolicyFile) -> Result<Capacity, PolicyError> {
        let Some(section) = &file.capacity else {
            return Ok(Capacity {
                sources: DEFAULT_SOURCES,
                cidrs: DEFAULT_CIDRS,
                bans: DEFAULT_BANS,
                blocks: DEFAULT_BLOCKS,
                rules: DEFAULT_RULES,
                decisions: DEFAULT_DECISIONS,
            });
        };
        let line = section.line();
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
            rules: field("rules", section.value.rules, DEFAULT_RULES, MAX_RULES)?,
            decisions: field(
                "decisions",
                section.value.decisions,
                DEFAULT_DECISIONS,
                MAX_DECISIONS,
            )?,
        })
    }

    /// The allow entries' networks, with their indexes.
    fn allow(&self, file: &PolicyFile) -> Result<Vec<(IpNet, usize)>, PolicyError> {
        let mut allow = Vec::with_capacity(file.allow.len());
        for (index, item) in file.allow.iter().enumerate() {
            let Target::Cidr(cidr) = &item.target else {
                continue;
            };
            let net = cidr_of(cidr).map_err(|e| self.invalid(self.line(Place::Allow(index)), e))?;
            allow.push((net, index));
        }
        self.check_repeats("allow", Place::Allow, allow.clone())?;
        Ok(allow)
    }

    /// Refuses a list in which an entry repeats an earlier one, naming the first such line.
    /// Found by sorting: filling a hash set of a million entries misses the cache on every
    /// one and takes several times longer.
    fn check_repeats(
        &self,
        list: &'static str,
        place: fn(usize) -> Place,
        mut entries: Vec<(IpNet, usize)>,
    ) -> Result<(), PolicyError> {
        entries.sort_unstable();
        let repeat = entries
            .chunk_by(|a, b| a.0 == b.0)
            .filter(|same| same.len() > 1)
            .map(|same| (same[0], same[1].1))
            .min_by_key(|&(_, index)| index);
        match repeat {
            Some(((net, first), index)) => Err(self.invalid(
                self.line(place(index)),
                Problem::Duplicate {
                    net,
                    list,
                    first_line: self.line(place(first)),
                },
            )),
            None => Ok(()),
        }
    }

    fn deny(
        &self,
        file: &PolicyFile,
        allow: &[(IpNet, usize)],
    ) -> Result<Vec<DenyRule>, PolicyError> {
        let mut deny = Vec::with_capacity(file.deny.len());
        let mut indexed = Vec::with_capacity(file.deny.len());
        // Allow entries by prefix length, so "is this deny entry inside an allow entry" is
        // one hash lookup per length the allow list uses rather than a scan of the list.
        let mut allow_by_len: BTreeMap<u8, HashMap<IpNet, usize>> = BTreeMap::new();
        for (net, index) in allow {
            allow_by_len
                .entry(net.prefix_len())
                .or_default()
                .insert(*net, *index);
        }
        // Entries share their rule's name: a million deny entries are a few rules.
        let mut names: HashMap<&str, Arc<str>> = HashMap::new();
        for (index, item) in file.deny.iter().enumerate() {
            let invalid = |problem: Problem| self.invalid(self.line(Place::Deny(index)), problem);
            if let Some(name) = &item.name {
                check_name(name).map_err(invalid)?;
            }
            let Target::Cidr(cidr) = &item.target else {
                continue;
            };
            let net = cidr_of(cidr).map_err(|e| invalid(e.into()))?;
            for (&len, allowed) in allow_by_len.range(..=net.prefix_len()) {
                let Ok(supernet) = IpNet::new(net.addr(), len).map(|n| n.trunc()) else {
                    continue;
                };
                if let Some(&allow_index) = allowed.get(&supernet) {
                    return Err(invalid(Problem::DenyCoveredByAllow {
                        deny: net,
                        allow: supernet,
                        allow_line: self.line(Place::Allow(allow_index)),
                    }));
                }
            }
            let name = item.name.as_deref().unwrap_or(UNNAMED_DENY);
            let name = Arc::clone(names.entry(name).or_insert_with(|| Arc::from(name)));
            deny.push(DenyRule {
                net,
                mode: item.mode,
                name,
            });
            indexed.push((net, index));
        }
        self.check_repeats("deny", Place::Deny, indexed)?;
        Ok(deny)
    }

    fn rate_limits(&self, file: &PolicyFile) -> Result<Vec<RateLimit>, PolicyError> {
        file.rate_limits
            .iter()
            .map(|item| {
                self.rate_limit(&item.value)
                    .map_err(|p| self.invalid(item.line(), p))
            })
            .collect()
    }

    fn rate_limit(&self, item: &RateLimitItem) -> Result<RateLimit, Problem> {
        check_name(&item.name)?;
        let rule = || item.name.clone();
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
        let limit = limit(
            &item.rate,
            item.burst,
            item.prefix_v4,
            item.prefix_v6,
            item.ban.as_ref(),
            &rule,
        )?;
        Ok(RateLimit {
            name: item.name.clone(),
            protocol: item.protocol,
            ports,
            count: item.count,
            limit,
            mode: item.mode,
        })
    }

    fn http(&self, file: &PolicyFile) -> Result<Option<Http>, PolicyError> {
        let Some(spanned) = &file.http else {
            return Ok(None);
        };
        let line = spanned.line();
        let section = &spanned.value;
        let mut ports = Vec::new();
        for &value in &section.ports {
            let port = u16::try_from(value)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| self.invalid(line, Problem::HttpPort { value }))?;
            if ports.contains(&port) {
                return Err(self.invalid(line, Problem::HttpPortTwice { port }));
            }
            ports.push(port);
        }
        if ports.is_empty() && !(section.routes.is_empty() && section.responses.is_empty()) {
            return Err(self.invalid(line, Problem::HttpNoPorts));
        }
        // Routes count toward capacity.rules (`check_names`).
        let count = section.responses.len();
        if count > MAX_RESPONSE_RULES {
            let problem = Problem::TooManyHttpRules {
                what: "responses",
                count,
                max: MAX_RESPONSE_RULES,
            };
            return Err(self.invalid(line, problem));
        }
        // Method (None: every method) and path, to the line that routed them first.
        let mut routed: HashMap<(Option<Method>, &str), u32> = HashMap::new();
        let mut routes = Vec::with_capacity(section.routes.len());
        for item in &section.routes {
            let line = item.line();
            let route = route(&item.value).map_err(|p| self.invalid(line, p))?;
            let methods: Vec<Option<Method>> = if route.methods.is_empty() {
                vec![None]
            } else {
                route.methods.iter().copied().map(Some).collect()
            };
            for method in methods {
                if let Some(&first_line) = routed.get(&(method, item.value.path.as_str())) {
                    let problem = Problem::DuplicateRoute {
                        rule: route.name.clone(),
                        method: method.map_or("every method", Method::name).to_string(),
                        path: route.path.clone(),
                        first_line,
                    };
                    return Err(self.invalid(line, problem));
                }
                routed.insert((method, item.value.path.as_str()), line);
            }
            routes.push(route);
        }
        let mut responses: Vec<ResponseRule> = Vec::with_capacity(section.responses.len());
        for item in &section.responses {
            let line = item.line();
            let rule = response(&item.value).map_err(|p| self.invalid(line, p))?;
            // The kernel keeps a few rule slots per status (`StatusRules`).
            for &status in &rule.statuses {
                let earlier = responses.iter().filter(|r| r.statuses.contains(&status));
                if earlier.count() >= RULES_PER_STATUS {
                    let problem = Problem::StatusInTooManyRules {
                        rule: rule.name.clone(),
                        status,
                        max: RULES_PER_STATUS,
                    };
                    return Err(self.invalid(line, problem));
                }
            }
            responses.push(rule);
        }
        let strict = match &section.strict {
            None => DEFAULT_STRICT,
            Some(StrictField::Flag(true)) => Some(Mode::Enforce),
            Some(StrictField::Flag(false)) => None,
            Some(StrictField::Word(word)) if word == "shadow" => Some(Mode::Shadow),
            Some(StrictField::Word(word)) => {
                let problem = Problem::HttpStrict {
                    value: word.clone(),
                };
                return Err(self.invalid(line, problem));
            }
        };
        Ok(Some(Http {
            ports,
            strict,
            routes,
            responses,
        }))
    }

    /// Rule names and deny names share one namespace: they label counters and events.
    /// Deny entries may share a name (a group); a rate limit's name must be its own.
    fn check_names(&self, file: &PolicyFile, capacity: &Capacity) -> Result<(), PolicyError> {
        let mut names: HashMap<&str, Place> = HashMap::new();
        names.insert(UNNAMED_DENY, Place::Line(0));
        names.insert(CLI_BLOCK, Place::Line(0));
        names.insert(HTTP_EVASION, Place::Line(0));
        for (index, item) in file.deny.iter().enumerate() {
            if let Some(name) = &item.name {
                names.entry(name).or_insert(Place::Deny(index));
            }
        }
        // Rate limits, routes and response rules: each name its own.
        let rate_limits = file
            .rate_limits
            .iter()
            .map(|r| (r.value.name.as_str(), r.line()));
        let http = file.http.iter().flat_map(|http| {
            let routes = http.value.routes.iter();
            let responses = http.value.responses.iter();
            routes
                .map(|r| (r.value.name.as_str(), r.line()))
                .chain(responses.map(|r| (r.value.name.as_str(), r.line())))
        });
        for (name, line) in rate_limits.chain(http) {
            if let Some(&first) = names.get(name) {
                return Err(self.invalid(
                    line,
                    Problem::DuplicateName {
                        name: name.to_string(),
                        first_line: self.line(first),
                    },
                ));
            }
            names.insert(name, Place::Line(line));
        }
        // Every name takes a rule id but `http-evasion` and `portcullis block`, whose ids
        // are reserved, and the unnamed deny group when no deny entry is in it.
        let unnamed_deny = file.deny.iter().any(|item| item.name.is_none());
        let count = names.len() - 3 + usize::from(unnamed_deny);
        if count > capacity.rules as usize {
            let problem = Problem::TooManyRules {
                count,
                capacity: capacity.rules,
            };
            // The capacity section's line when there is one: that is what to change.
            let line = file.capacity.as_ref().map_or(1, |c| c.line());
            return Err(self.invalid(line, problem));
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
                        file.rate_limits[index].line(),
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

/// The bucket, source groups and escalation of a rule with a rate (a rate limit, a route).
fn limit(
    rate: &str,
    burst_given: Option<u64>,
    v4: Option<u8>,
    v6: Option<u8>,
    ban_section: Option<&BanSection>,
    rule: &dyn Fn() -> String,
) -> Result<Limit, Problem> {
    let rate = units::parse_rate(rate)?;
    let (prefix_v4, prefix_v6) = grouping(v4, v6, rule)?;
    Ok(Limit {
        interval_ns: rate.interval_ns,
        burst: burst(rate, burst_given, rule)?,
        prefix_v4,
        prefix_v6,
        ban: ban_section
            .map(|section| ban(section, prefix_v4, prefix_v6, rule))
            .transpose()?,
    })
}

/// A rule's burst: as given, or the rate's count; at least 1, and small enough that the
/// kernel's bucket (burst x interval nanoseconds) fits a u64.
fn burst(rate: units::Rate, burst: Option<u64>, rule: &dyn Fn() -> String) -> Result<u64, Problem> {
    let burst = burst.unwrap_or(rate.count);
    if burst == 0 {
        return Err(Problem::BurstZero { rule: rule() });
    }
    if burst.checked_mul(rate.interval_ns).is_none() {
        return Err(Problem::BurstTooLarge {
            rule: rule(),
            burst,
        });
    }
    Ok(burst)
}

/// A rule's source groups: `prefix_v4` (default 32) and `prefix_v6` (default 64).
fn grouping(
    v4: Option<u8>,
    v6: Option<u8>,
    rule: &dyn Fn() -> String,
) -> Result<(u8, u8), Problem> {
    let prefix_v4 = v4.unwrap_or(32);
    if prefix_v4 > 32 {
        return Err(Problem::PrefixV4 {
            rule: rule(),
            value: prefix_v4,
        });
    }
    let prefix_v6 = v6.unwrap_or(64);
    if prefix_v6 > 128 {
        return Err(Problem::PrefixV6 {
            rule: rule(),
            value: prefix_v6,
        });
    }
    Ok((prefix_v4, prefix_v6))
}

/// A `ban:` section of a rule whose source groups are `prefix_v4` and `prefix_v6`, which
/// must not be wider than one abusive source should be able to ban.
fn ban(
    section: &BanSection,
    prefix_v4: u8,
    prefix_v6: u8,
    rule: &dyn Fn() -> String,
) -> Result<Ban, Problem> {
    if section.after == 0 {
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
    Ok(Ban {
        after: section.after,
        within_ns: match &section.within {
            Some(within) => units::parse_duration(within)?,
            None => DEFAULT_BAN_WINDOW_NS,
        },
        for_ns: units::parse_duration(&section.duration)?,
        aggregate: aggregate(section.aggregate.as_ref(), rule)?,
    })
}

fn route(item: &RouteItem) -> Result<Route, Problem> {
    check_name(&item.name)?;
    let rule = || item.name.clone();
    check_route_path(&item.path, &rule)?;
    let mut methods = Vec::new();
    for name in &item.methods {
        let method = Method::from_name(name).ok_or_else(|| Problem::UnknownMethod {
            rule: rule(),
            method: name.clone(),
            known: Method::ALL.map(Method::name).join(", "),
        })?;
        if methods.contains(&method) {
            return Err(Problem::MethodTwice {
                rule: rule(),
                method: method.name(),
            });
        }
        methods.push(method);
    }
    let limited = item.burst.is_some()
        || item.ban.is_some()
        || item.prefix_v4.is_some()
        || item.prefix_v6.is_some();
    let over_limit = match item.over_limit.as_deref() {
        None | Some("reset") => OverLimit::Reset,
        Some("drop") if item.rate.is_some() => OverLimit::Drop,
        Some(value) => {
            return Err(Problem::OverLimit {
                rule: rule(),
                value: value.to_string(),
            });
        }
    };
    let action = match &item.rate {
        None if item.deny && !limited => RouteAction::Deny,
        Some(rate) if !item.deny => RouteAction::Limit(limit(
            rate,
            item.burst,
            item.prefix_v4,
            item.prefix_v6,
            item.ban.as_ref(),
            &rule,
        )?),
        _ => return Err(Problem::RouteAction { rule: rule() }),
    };
    Ok(Route {
        name: item.name.clone(),
        methods,
        path: item.path.clone(),
        action,
        over_limit,
        mode: item.mode,
    })
}

/// A route path is matched byte for byte against the request target the kernel reads, so
/// it must be something a request line can carry, and fit the kernel's window.
fn check_route_path(path: &str, rule: &dyn Fn() -> String) -> Result<(), Problem> {
    let why = if !path.starts_with('/') {
        Some("must start with /")
    } else if path.len() > MAX_ROUTE_PATH {
        Some("is longer than the 191 bytes of the target the kernel reads")
    } else if !path.bytes().all(|b| b.is_ascii_graphic()) {
        Some(
            "may hold visible ASCII only (no spaces or control characters; percent-encode the rest)",
        )
    } else if path.contains(['?', '#']) {
        Some("is a path prefix: it may not hold ? or #")
    } else {
        None
    };
    match why {
        Some(why) => Err(Problem::RoutePath {
            rule: rule(),
            path: path.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

fn response(item: &ResponseItem) -> Result<ResponseRule, Problem> {
    check_name(&item.name)?;
    let rule = || item.name.clone();
    let mut statuses: Vec<u16> = Vec::new();
    for &status in &item.status {
        if !(100..=599).contains(&status) {
            return Err(Problem::ResponseStatus {
                rule: rule(),
                value: status,
            });
        }
        if statuses.contains(&status) {
            return Err(Problem::ResponseStatuses { rule: rule() });
        }
        statuses.push(status);
    }
    if statuses.is_empty() {
        return Err(Problem::ResponseStatuses { rule: rule() });
    }
    let (prefix_v4, prefix_v6) = grouping(item.prefix_v4, item.prefix_v6, &rule)?;
    Ok(ResponseRule {
        name: item.name.clone(),
        statuses,
        prefix_v4,
        prefix_v6,
        ban: ban(&item.ban, prefix_v4, prefix_v6, &rule)?,
        mode: item.mode,
    })
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
