//! Why a packet got its verdict. Codes are stable: they are metric labels and event fields.
//! Never renumber a code; a retired one stays reserved (`Reason::RETIRED`).

use crate::maps::REASON_SLOTS;

/// The decision that settled a packet's verdict.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Passed: IP traffic no entry or rule applied to.
    NoMatch = 0,
    /// Passed: not IPv4 or IPv6 (ARP, LLDP...), or more VLAN tags than we parse.
    NotIp = 1,
    /// Passed: the source is on the allow list.
    Allowed = 2,
    /// Passed: a rate-limit rule matched and the source had tokens left.
    WithinLimit = 3,
    /// Dropped: the source is on the deny list.
    Denied = 4,
    /// Dropped: the source is under a temporary ban.
    Banned = 5,
    /// Dropped: the source exceeded a rate-limit rule.
    RateLimited = 6,
    /// Dropped: the frame claims to be IP but its headers are truncated or invalid.
    Malformed = 7,
    /// Refused: an HTTP request for a route that is denied (`deny: true`).
    RouteDenied = 8,
    /// Refused: an HTTP request over its route's rate.
    RouteLimited = 9,
    /// Refused (`http.strict`): a request on an HTTP port shaped so that the route lookup
    /// cannot judge it as the server will read it (a non-canonical or absolute-form
    /// target, a request line that does not end within the segment, the HTTP/2 preface,
    /// a fragmented segment).
    HttpEvasion = 10,
    /// Dropped: a decision from a detector (a CrowdSec ban) covers the source.
    Decision = 11,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::NoMatch,
        Reason::NotIp,
        Reason::Allowed,
        Reason::WithinLimit,
        Reason::Denied,
        Reason::Banned,
        Reason::RateLimited,
        Reason::Malformed,
        Reason::RouteDenied,
        Reason::RouteLimited,
        Reason::HttpEvasion,
        Reason::Decision,
    ];
    /// Codes once used and retired: never given to a new reason.
    pub const RETIRED: [u32; 0] = [];

    /// Stable lowercase name used in logs, events and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NoMatch => "no_match",
            Reason::NotIp => "not_ip",
            Reason::Allowed => "allowed",
            Reason::WithinLimit => "within_limit",
            Reason::Denied => "denied",
            Reason::Banned => "banned",
            Reason::RateLimited => "rate_limited",
            Reason::Malformed => "malformed",
            Reason::RouteDenied => "route_denied",
            Reason::RouteLimited => "route_limited",
            Reason::HttpEvasion => "http_evasion",
            Reason::Decision => "decision",
        }
    }

    pub const fn from_code(code: u32) -> Option<Reason> {
        match code {
            0 => Some(Reason::NoMatch),
            1 => Some(Reason::NotIp),
            2 => Some(Reason::Allowed),
            3 => Some(Reason::WithinLimit),
            4 => Some(Reason::Denied),
            5 => Some(Reason::Banned),
            6 => Some(Reason::RateLimited),
            7 => Some(Reason::Malformed),
            8 => Some(Reason::RouteDenied),
            9 => Some(Reason::RouteLimited),
            10 => Some(Reason::HttpEvasion),
            11 => Some(Reason::Decision),
            _ => None,
        }
    }

    /// The verdict a packet with this reason gets in enforce mode.
    pub const fn action(self) -> Action {
        match self {
            Reason::NoMatch | Reason::NotIp | Reason::Allowed | Reason::WithinLimit => Action::Pass,
            Reason::Denied
            | Reason::Banned
            | Reason::RateLimited
            | Reason::Malformed
            | Reason::Decision => Action::Drop,
            Reason::RouteDenied | Reason::RouteLimited | Reason::HttpEvasion => Action::Reset,
        }
    }
}

// The counters are indexed by reason code: every code, retired ones included, needs a slot.
const _: () = {
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!((Reason::ALL[i] as u32) < REASON_SLOTS);
        i += 1;
    }
    let mut i = 0;
    while i < Reason::RETIRED.len() {
        assert!(Reason::RETIRED[i] < REASON_SLOTS);
        i += 1;
    }
};

/// The verdict, independent of the hook (XDP or TC) that carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Refused by resetting the connection: the segment, rewritten into a RST toward the
    /// server, passes, so the server frees the connection and answers the client's next
    /// segment with a RST of its own. Nobody is left waiting, as a silent drop would leave
    /// them.
    Reset,
}

impl Action {
    /// The `verdict` label of metrics and events.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
            Action::Reset => "reset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reasons are metric labels and event fields that dashboards and alerts match on.
    #[test]
    fn codes_and_names_are_stable() {
        let pinned = [
            (0, "no_match", Action::Pass),
            (1, "not_ip", Action::Pass),
            (2, "allowed", Action::Pass),
            (3, "within_limit", Action::Pass),
            (4, "denied", Action::Drop),
            (5, "banned", Action::Drop),
            (6, "rate_limited", Action::Drop),
            (7, "malformed", Action::Drop),
            (8, "route_denied", Action::Reset),
            (9, "route_limited", Action::Reset),
            (10, "http_evasion", Action::Reset),
            (11, "decision", Action::Drop),
        ];
        assert_eq!(Reason::ALL.len(), pinned.len());
        for (reason, (code, name, action)) in Reason::ALL.into_iter().zip(pinned) {
            assert_eq!(
                (reason as u32, reason.name(), reason.action()),
                (code, name, action)
            );
            assert_eq!(Reason::from_code(code), Some(reason));
            assert!(!Reason::RETIRED.contains(&code), "{code} is retired");
        }
        assert_eq!(Reason::from_code(12), None);
    }
}
