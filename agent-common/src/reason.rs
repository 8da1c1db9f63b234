//! Why a packet got its verdict. Codes are stable: they are metric labels and event fields.
//! Never renumber a code; a retired one stays reserved.

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
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NoMatch,
        Reason::NotIp,
        Reason::Allowed,
        Reason::WithinLimit,
        Reason::Denied,
        Reason::Banned,
        Reason::RateLimited,
        Reason::Malformed,
    ];

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
            _ => None,
        }
    }

    /// The verdict a packet with this reason gets in enforce mode.
    pub const fn action(self) -> Action {
        match self {
            Reason::NoMatch | Reason::NotIp | Reason::Allowed | Reason::WithinLimit => Action::Pass,
            Reason::Denied | Reason::Banned | Reason::RateLimited | Reason::Malformed => {
                Action::Drop
            }
        }
    }
}

/// The verdict, independent of the hook (XDP or TC) that carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
}
