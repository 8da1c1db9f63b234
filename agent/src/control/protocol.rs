//! Requests and responses on the control socket.

use serde::{Deserialize, Serialize};

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
    /// Temporary and escalation bans with their time left.
    Bans,
    Stats,
    Status,
    /// Stream events as JSON lines until the client hangs up.
    Events,
    /// Prometheus metrics in the text format, as `{"text": ...}`.
    Metrics,
    /// Whether the programs are attached (as read back from the kernel) and a policy is in
    /// force: `{"ready": bool, "problems": [...]}`.
    Ready,
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
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            message: None,
            result,
        }
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
