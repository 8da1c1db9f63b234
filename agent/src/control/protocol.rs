//! Requests and responses on the control socket, shared by the agent and the CLI: each
//! request's answer is one of the typed results below, carried in `Response::result`, so a
//! renamed field is a compile error on both sides, not a blank column.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::policy::Mode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Validate and apply a policy; `origin` says where it came from (a file name).
    PolicyApply {
        text: String,
        origin: String,
    },
    /// What applying this policy would change.
    PolicyDiff {
        text: String,
    },
    /// The policy in force with its version, and the versions kept.
    PolicyShow,
    /// Apply a kept version again: `version`, or the one before the current one.
    PolicyRollback {
        version: Option<u64>,
    },
    /// Switch one rate limit, deny group or deny CIDR to enforce or shadow.
    Mode {
        rule: String,
        mode: Mode,
    },
    /// Ban a CIDR, for `ttl_secs` or until unblocked.
    Block {
        cidr: String,
        ttl_secs: Option<u64>,
        reason: Option<String>,
    },
    Unblock {
        cidr: String,
    },
    /// Blocks, escalation bans and detector decisions with their time left; `kind` keeps
    /// one kind, `covering` the entries that hold an address or CIDR or lie inside it.
    Bans {
        #[serde(default)]
        kind: Option<BanKind>,
        #[serde(default)]
        covering: Option<String>,
    },
    Stats,
    Status,
    /// Stream events as JSON lines until the client hangs up.
    Events,
}

/// Why a request failed; the CLI turns these into exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidPolicy,
    UnknownRule,
    AlreadyBlocked,
    NotBlocked,
    NoSuchVersion,
    BadRequest,
    PermissionDenied,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub result: serde_json::Value,
}

impl Response {
    /// A successful answer carrying `result`.
    pub fn ok(result: &impl Serialize) -> Self {
        Self {
            ok: true,
            error: None,
            message: None,
            result: serde_json::to_value(result).expect("results serialize"),
        }
    }

    /// The typed result of a successful answer.
    pub fn result<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.result)
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(kind),
            message: Some(message.into()),
            result: serde_json::Value::Null,
        }
    }
}

/// The answer to a policy apply, a mode switch or a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The version in force now (the same one if nothing changed).
    pub version: u64,
    /// What changed, as `policy diff` prints it.
    pub changes: Vec<String>,
    /// For a rollback: the version whose text was applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u64>,
    /// What to know about the lists it names (not read yet, bad lines, not applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The answer to `policy diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub changes: Vec<String>,
}

/// The answer to `policy show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyShown {
    pub version: u64,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    pub origin: String,
    /// Run-time mode switches on top of the text.
    pub modes: BTreeMap<String, Mode>,
    pub text: String,
    /// The versions kept for rollback, oldest first.
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionSummary {
    pub version: u64,
    pub applied_at: u64,
    pub origin: String,
}

/// The answer to `block`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub cidr: String,
    /// `None`: until unblocked.
    pub ttl_secs: Option<u64>,
}

/// The answer to `unblock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unblocked {
    pub cidr: String,
}

/// The answer to `bans`: the bans in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanList {
    pub bans: Vec<BanInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanInfo {
    pub cidr: String,
    pub kind: BanKind,
    /// The rule that made it (`block` for blocks).
    pub rule: String,
    /// How it acts now: blocks always enforce; an escalation ban takes its rule's mode (a
    /// shadow rule's ban drops nothing).
    pub mode: Mode,
    /// `None`: until lifted.
    pub seconds_left: Option<u64>,
    /// What `block --reason` said.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanKind {
    /// Made with `portcullis block`.
    Block,
    /// Made by a rule's escalation.
    Escalation,
    /// A detector's decision (CrowdSec); `rule` is its origin.
    Decision,
}

impl BanKind {
    pub fn name(self) -> &'static str {
        match self {
            BanKind::Block => "block",
            BanKind::Escalation => "escalation",
            BanKind::Decision => "decision",
        }
    }
}

/// The answer to `stats`: the kernel's counters summed over CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Final verdicts by reason name.
    pub verdicts: BTreeMap<String, u64>,
    /// Shadow-mode hits (would have dropped) by reason name.
    pub shadow: BTreeMap<String, u64>,
    /// Malformed frames by cause name.
    pub malformed: BTreeMap<String, u64>,
    /// Per rule or deny name, those that counted anything.
    pub rules: BTreeMap<String, RuleCounts>,
    pub events: EventCounts,
    pub maps: MapStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounts {
    pub passed: u64,
    pub dropped: u64,
    pub shadowed: u64,
    /// Server responses a response rule counted (0 for other rules).
    #[serde(default)]
    pub responses: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    pub written: u64,
    /// Not written: the per-second budget was spent.
    pub suppressed: u64,
    /// Not written: the ring buffer was full.
    pub lost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStats {
    pub allow: usize,
    pub deny: usize,
    /// Escalation bans in the maps.
    pub bans: usize,
    /// Operator blocks in the maps.
    pub blocks: usize,
    pub buckets: usize,
    /// Named rules in force (deny groups, rate limits, routes, response rules).
    #[serde(default)]
    pub rules: usize,
    pub bans_failed: u64,
    pub capacity: CapacityStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityStats {
    pub sources: u32,
    pub cidrs: u32,
    pub bans: u32,
    pub blocks: u32,
    #[serde(default)]
    pub rules: u32,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub interfaces: Vec<InterfaceStatus>,
    pub policy_version: u64,
    pub policy_file: String,
    /// Run-time mode switches in force.
    pub modes: BTreeMap<String, Mode>,
    pub pin_dir: String,
    pub uptime_secs: u64,
    pub agent_version: String,
    /// What `/readyz` answers: the programs attached as the kernel reports them, and a
    /// policy in force.
    pub ready: bool,
    /// What keeps the agent from being ready; empty when it is.
    pub problems: Vec<String>,
    /// True when this agent took over the maps a previous one pinned (with their bans,
    /// buckets and policy) instead of starting empty.
    pub took_over_maps: bool,
    /// Why the policy file is not what is in force (it is invalid or unreadable, and
    /// `policy_version` is the last good one), with the file's error and line.
    pub policy_file_error: Option<String>,
    /// The CrowdSec decision sync, when the agent follows a Local API.
    #[serde(default)]
    pub crowdsec: Option<CrowdsecStatus>,
    /// The IP lists the policy names.
    #[serde(default)]
    pub lists: Vec<ListStatus>,
}

/// One IP list: what of it is in force, and how its reads go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListStatus {
    /// The file or URL.
    pub list: String,
    /// The entry naming it, as `policy diff` shows it.
    pub rule: String,
    /// The name its hits are counted under ("allow" for an allow list).
    pub name: String,
    /// Entries in force.
    pub entries: usize,
    /// Entries already held by the policy or an earlier list.
    pub duplicates: usize,
    /// Deny entries inside an allow entry, which cannot apply.
    pub covered_by_allow: usize,
    /// Why the copy is not applied at all (capacity).
    pub not_applied: Option<String>,
    /// Lines of the copy that are not entries, and the first of them.
    pub bad_lines: usize,
    pub bad_lines_shown: Vec<String>,
    /// When the copy in force was read or fetched, and whether it came from the cache.
    pub read_unix: Option<u64>,
    pub from_cache: bool,
    /// The last read or fetch that succeeded (a 304 included).
    pub checked_unix: Option<u64>,
    /// Why reads fail, and since when; the copy in force stays.
    pub error: Option<String>,
    pub failing_since_unix: Option<u64>,
}

/// The CrowdSec decision sync: how the pulls go and what is enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrowdsecStatus {
    pub lapi_url: String,
    /// Pulls that succeeded, and that failed.
    pub pulls: u64,
    pub pull_errors: u64,
    /// Unix time of the last pull that succeeded.
    pub last_success_unix: Option<u64>,
    /// Unix time since which the decisions in force may be out of date (the first failed
    /// pull since the last one that succeeded, or the start); `None` while in sync.
    pub stale_since_unix: Option<u64>,
    /// Why the last pull failed, while it is failing.
    pub last_error: Option<String>,
    /// Prefixes enforced, by origin (`crowdsec`, `cscli`, `CAPI`, `lists`...).
    pub decisions: BTreeMap<String, usize>,
    /// Decisions not enforced, by why (`type:captcha`, `scope:country`, `malformed`, and
    /// `own`: this node's bans come back, already enforced as bans).
    pub ignored: BTreeMap<String, u64>,
    /// This node's bans posted to the Local API (with machine credentials), and failed
    /// posts, with the last failure while failing.
    #[serde(default)]
    pub bans_shared: u64,
    #[serde(default)]
    pub share_errors: u64,
    #[serde(default)]
    pub last_share_error: Option<String>,
    /// Decisions held but not enforced: the decision maps are full (`capacity.decisions`).
    #[serde(default)]
    pub over_capacity: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub interface: String,
    /// "xdp-native", "xdp-skb" or "tc" for a new link; "xdp" or "tc" for a link taken over.
    pub hook: String,
    pub program_id: u32,
    /// True when the link was a previous agent's and only the program in it was replaced.
    pub adopted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let cases = [
            (
                Request::Mode {
                    rule: "login".into(),
                    mode: Mode::Shadow,
                },
                r#"{"command":"mode","rule":"login","mode":"shadow"}"#,
            ),
            (Request::Status, r#"{"command":"status"}"#),
            (
                Request::PolicyRollback { version: Some(3) },
                r#"{"command":"policy_rollback","version":3}"#,
            ),
            (
                Request::Block {
                    cidr: "192.0.2.0/24".into(),
                    ttl_secs: Some(600),
                    reason: None,
                },
                r#"{"command":"block","cidr":"192.0.2.0/24","ttl_secs":600,"reason":null}"#,
            ),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        }
    }

    #[test]
    fn unknown_commands_and_fields_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"mode","rule":"a"}"#).is_err());
    }

    #[test]
    fn errors_carry_a_kind_and_a_message() {
        let json =
            serde_json::to_string(&Response::error(ErrorKind::UnknownRule, "no rule 'x'")).unwrap();
        assert_eq!(
            json,
            r#"{"ok":false,"error":"unknown_rule","message":"no rule 'x'","result":null}"#
        );
        let back: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(back.error, Some(ErrorKind::UnknownRule));
    }
}
