//! Ring-buffer records: what the kernel reports about a drop, a shadow hit or a ban.

use crate::Mode;

/// What happened to the packet an event reports. Codes are stable (they cross the ring
/// buffer between a kernel object and the agent reading it); a retired code stays reserved.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventAction {
    /// The packet was dropped.
    Dropped = 0,
    /// Shadow mode: the packet passed but would have been dropped.
    WouldDrop = 1,
    /// An escalation ban started (the packet itself was dropped as rate-limited).
    Banned = 2,
    /// Shadow mode: an escalation ban would have started.
    WouldBan = 3,
    /// An HTTP request was refused by resetting its connection.
    Reset = 4,
}

impl EventAction {
    pub const ALL: [EventAction; 5] = [
        EventAction::Dropped,
        EventAction::WouldDrop,
        EventAction::Banned,
        EventAction::WouldBan,
        EventAction::Reset,
    ];
    /// Codes once used and retired: never given to a new action.
    pub const RETIRED: [u8; 0] = [];

    pub const fn code(self) -> u8 {
        self as u8
    }

    pub const fn from_code(code: u8) -> Option<EventAction> {
        match code {
            0 => Some(EventAction::Dropped),
            1 => Some(EventAction::WouldDrop),
            2 => Some(EventAction::Banned),
            3 => Some(EventAction::WouldBan),
            4 => Some(EventAction::Reset),
            _ => None,
        }
    }

    /// The `action` field of an event line.
    pub const fn name(self) -> &'static str {
        match self {
            EventAction::Dropped => "drop",
            EventAction::WouldDrop => "would_drop",
            EventAction::Banned => "ban",
            EventAction::WouldBan => "would_ban",
            EventAction::Reset => "reset",
        }
    }

    /// The mode of the rule that acted.
    pub const fn mode(self) -> Mode {
        match self {
            EventAction::Dropped | EventAction::Banned | EventAction::Reset => Mode::Enforce,
            EventAction::WouldDrop | EventAction::WouldBan => Mode::Shadow,
        }
    }

    /// What happened to the packet: shadow actions let it pass.
    pub const fn verdict(self) -> crate::Action {
        match (self, self.mode()) {
            (EventAction::Reset, _) => crate::Action::Reset,
            (_, Mode::Enforce) => crate::Action::Drop,
            (_, Mode::Shadow) => crate::Action::Pass,
        }
    }
}

/// One ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    /// Source address; IPv4 as IPv4-mapped IPv6.
    pub src: [u8; 16],
    pub ifindex: u32,
    pub rule: u32,
    /// A `Reason` code.
    pub reason: u32,
    /// Destination port, 0 when the packet carries none.
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// An `EventAction` code.
    pub action: u8,
    /// Bytes of `request` in use: 0 unless an HTTP route decided.
    pub request_len: u8,
    pub _pad: [u8; 6],
    /// For a route's decision: the request's method code (`http::Method`), then the first
    /// bytes of its target window (the target, then what follows it in the segment).
    pub request: [u8; EVENT_REQUEST_BYTES],
}

/// Bytes of a request an event carries: the method code and 63 bytes of target.
pub const EVENT_REQUEST_BYTES: usize = 64;

impl Default for Event {
    fn default() -> Self {
        Self {
            ts_ns: 0,
            src: [0; 16],
            ifindex: 0,
            rule: 0,
            reason: 0,
            dport: 0,
            family: 0,
            protocol: 0,
            action: 0,
            request_len: 0,
            _pad: [0; 6],
            request: [0; EVENT_REQUEST_BYTES],
        }
    }
}

const _: () = assert!(core::mem::size_of::<Event>() == 112);

#[cfg(test)]
mod tests {
    use super::*;

    /// Event lines are parsed by users' log pipelines: codes and names never change.
    #[test]
    fn codes_and_names_are_stable() {
        let pinned = [
            (0, "drop", Mode::Enforce),
            (1, "would_drop", Mode::Shadow),
            (2, "ban", Mode::Enforce),
            (3, "would_ban", Mode::Shadow),
            (4, "reset", Mode::Enforce),
        ];
        assert_eq!(EventAction::ALL.len(), pinned.len());
        for (action, (code, name, mode)) in EventAction::ALL.into_iter().zip(pinned) {
            assert_eq!(
                (action.code(), action.name(), action.mode()),
                (code, name, mode)
            );
            assert_eq!(EventAction::from_code(code), Some(action));
            assert!(!EventAction::RETIRED.contains(&code), "{code} is retired");
        }
        assert_eq!(EventAction::from_code(5), None);
    }
}
