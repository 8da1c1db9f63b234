//! Policy files: parsing (`file`), value syntaxes (`units`) and validation into a `Policy`
//! that is known to fit the kernel's maps. Nothing here touches the kernel.

pub mod diff;
mod file;
pub mod http;
mod list_url;
pub mod units;
mod validate;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;

/// Map sizes (the `capacity` section), defined with the map table that uses them.
pub use agent_common::{Capacity, Mode};
pub use file::{Count, Protocol};
pub use list_url::ListUrl;
pub use validate::Problem;

/// Default for `events.per_second`: enough to see what an attack looks like, far too few
/// to cost the drop path anything.
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 1000;
/// Default for `capacity.sources`: token buckets kept (a new source beyond them replaces
/// the fullest bucket of its set; see `agent_common::buckets`).
pub const DEFAULT_SOURCES: u32 = 131_072;
/// Default for `capacity.cidrs`: entries per address family in each of allow and deny.
pub const DEFAULT_CIDRS: u32 = 1_048_576;
/// Default for `capacity.bans`: escalation bans per address family.
pub const DEFAULT_BANS: u32 = 65_536;
/// Default for `capacity.blocks`: operator blocks per address family, in maps escalation
/// cannot fill.
pub const DEFAULT_BLOCKS: u32 = 65_536;
/// Default for `capacity.rules`: named rules (deny names, rate limits, HTTP routes and
/// response rules together).
pub const DEFAULT_RULES: u32 = 1000;
/// Default for `capacity.decisions`: detector decisions (CrowdSec bans, community
/// blocklists) per address family. Not preallocated: only the decisions held take memory.
pub const DEFAULT_DECISIONS: u32 = 1_048_576;
/// Default for a list URL's `refresh`: lists like Spamhaus DROP change a few times a day
/// and ask not to be fetched more often than hourly.
pub const DEFAULT_LIST_REFRESH: Duration = Duration::from_secs(3600);
/// Default for `ban.within`.
pub const DEFAULT_BAN_WINDOW_NS: u64 = 60_000_000_000;
/// Defaults for `ban.aggregate`.
pub const DEFAULT_AGGREGATE_AFTER: u32 = 16;
pub const DEFAULT_AGGREGATE_PREFIX_V4: u8 = 24;
pub const DEFAULT_AGGREGATE_PREFIX_V6: u8 = 48;
/// Name under which deny entries without a name are counted and reported.
pub const UNNAMED_DENY: &str = "deny";
/// Name under which `portcullis block` bans are counted and reported.
pub const CLI_BLOCK: &str = "block";

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<DenyRule>,
    pub rate_limits: Vec<RateLimit>,
    pub events_per_second: u32,
    pub capacity: Capacity,
    /// The `http:` section, if the file has one.
    pub http: Option<http::Http>,
    /// Allow and deny entries that name an IP list, in the file's order.
    pub lists: Vec<ListRule>,
    /// The entries of each list that are in force, in the order of `lists`; empty as parsed,
    /// filled from the lists' copies by `crate::lists::expand`.
    pub listed: Vec<Vec<IpNet>>,
}

/// An allow or deny entry naming an IP list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRule {
    pub source: ListSource,
    pub action: ListAction,
    /// How often a URL is fetched again; files are watched instead.
    pub refresh: Duration,
    /// The policy's `capacity.cidrs`, which bounds the list's entries.
    pub capacity_cidrs: u32,
    /// The entry's line in the policy file.
    pub line: u32,
}

/// Where a list's entries come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListSource {
    File(PathBuf),
    Url(ListUrl),
}

impl std::fmt::Display for ListSource {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            ListSource::File(path) => write!(f, "{}", path.display()),
            ListSource::Url(url) => write!(f, "{url}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListAction {
    Allow,
    /// Counted under `name` (a deny name, or `UNNAMED_DENY`) and enforced or shadowed.
    Deny {
        name: String,
        mode: Mode,
    },
}

impl ListRule {
    /// "allow" or "deny NAME", as lists are shown to people.
    pub fn describe(&self) -> String {
        match &self.action {
            ListAction::Allow => format!("allow list {}", self.source),
            ListAction::Deny { name, mode } => {
                format!("deny list {} ({name}, {})", self.source, mode.name())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DenyRule {
    pub net: IpNet,
    pub mode: Mode,
    /// The group it is counted under: its `name`, or `UNNAMED_DENY`; shared by the
    /// rule's entries.
    pub name: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub name: String,
    pub protocol: Protocol,
    /// Inclusive destination port ranges; empty means the whole protocol.
    pub ports: Vec<(u16, u16)>,
    pub count: Count,
    pub limit: Limit,
    pub mode: Mode,
}

/// A rate limit's bucket, source groups and escalation, as a rate-limit rule or an HTTP
/// route states them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// One token every `interval_ns`.
    pub interval_ns: u64,
    pub burst: u64,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub ban: Option<Ban>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub after: u32,
    pub within_ns: u64,
    pub for_ns: u64,
    pub aggregate: Aggregate,
}

/// Ban aggregation: after `after` bans of the rule inside one wider prefix within a ban's
/// duration, the next ban there is of the wider prefix, so one network spraying its addresses
/// (an IPv6 /48 holds 65,536 /64 groups) takes one ban entry, not the whole map. A family
/// whose wider prefix is not wider than the rule's own groups does not widen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregate {
    /// 0: never widen.
    pub after: u32,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            after: DEFAULT_AGGREGATE_AFTER,
            prefix_v4: DEFAULT_AGGREGATE_PREFIX_V4,
            prefix_v6: DEFAULT_AGGREGATE_PREFIX_V6,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read the policy file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: u32,
        column: u32,
        message: String,
    },
    #[error("{path}:{line}: {problem}")]
    Invalid {
        path: PathBuf,
        line: u32,
        problem: Problem,
    },
}

impl Policy {
    /// This policy with run-time mode switches applied. A name is a rate limit, an HTTP
    /// route or response rule, `http-evasion` (when `http.strict` is on), a deny group (`name` of deny entries, or "deny" for the
    /// unnamed ones) or the CIDR of one deny entry.
    pub fn with_modes<'a>(
        mut self,
        modes: impl IntoIterator<Item = (&'a String, &'a Mode)>,
    ) -> Result<Policy, UnknownRule> {
        for (name, mode) in modes {
            if let Some(rule) = self.rate_limits.iter_mut().find(|r| &r.name == name) {
                rule.mode = *mode;
                continue;
            }
            if let Some(http) = &mut self.http {
                if let Some(route) = http.routes.iter_mut().find(|r| &r.name == name) {
                    route.mode = *mode;
                    continue;
                }
                if let Some(rule) = http.responses.iter_mut().find(|r| &r.name == name) {
                    rule.mode = *mode;
                    continue;
                }
                if name == http::HTTP_EVASION && http.strict.is_some() {
                    http.strict = Some(*mode);
                    continue;
                }
            }
            let cidr = units::parse_cidr(name).ok();
            let mut found = false;
            for list in &mut self.lists {
                if let ListAction::Deny {
                    name: list_name,
                    mode: list_mode,
                } = &mut list.action
                    && list_name == name
                {
                    *list_mode = *mode;
                    found = true;
                }
            }
            for deny in &mut self.deny {
                if &*deny.name == name.as_str() || Some(deny.net) == cidr {
                    deny.mode = *mode;
                    found = true;
                }
            }
            if !found {
                return Err(UnknownRule(name.clone()));
            }
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no rate limit, route, response rule, deny name or deny CIDR called '{0}' in the policy in force"
)]
pub struct UnknownRule(pub String);

/// Reads a policy file's text.
pub fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    parse(path, &read(path)?)
}

/// Validates policy text; `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    validate::parse(path, text)
}

#[cfg(test)]
mod tests;
