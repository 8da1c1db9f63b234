//! What the kernel and the agent share about HTTP requests: the method codes, the window of
//! the request target the kernel reads, and the key routes are looked up by.
//!
//! A route lookup key is the method code followed by the first `TARGET_WINDOW` bytes after
//! "METHOD " in the segment, in an LPM trie: the longest stored prefix is the most specific
//! route. The agent stores each route's path followed by each byte that may end a path
//! segment (space, `/`, `?`), so `/api/login` matches `/api/login`, `/api/login/x` and
//! `/api/login?next=/` but not `/api/loginx`.

/// Bytes of the request target the kernel reads, starting right after "METHOD ".
pub const TARGET_WINDOW: usize = 192;
/// The longest route path: it must leave room in the window for the byte after it.
pub const MAX_ROUTE_PATH: usize = TARGET_WINDOW - 1;
/// Bytes of a route key after its prefix length: the method code, then the window.
pub const ROUTE_KEY_BYTES: usize = 1 + TARGET_WINDOW;
// An LPM trie key holds at most 256 bytes of data (kernel/bpf/lpm_trie.c).
const _: () = assert!(ROUTE_KEY_BYTES <= 256);

/// Route trie keys one route takes at most: up to 9 methods and 3 segment ends. The trie
/// (`capacity.rules` routes' worth) is not preallocated: only the keys stored take memory.
pub const ROUTE_KEYS_PER_ROUTE: u32 = 27;

/// `PortRules::http` of a port that does not carry HTTP.
pub const HTTP_NONE: u32 = 0;
/// `PortRules::http` of an HTTP port with `strict: false`: requests judged by route only.
pub const HTTP_LENIENT: u32 = 1;
/// `PortRules::http` of an HTTP port with `strict` on: evasive requests are judged
/// `http_evasion` under `EVASION_RULE` (whose mode says enforce or shadow).
pub const HTTP_STRICT: u32 = 2;

/// `RouteEntry::kind` of a rate-limited route: its rule's bucket decides.
pub const ROUTE_LIMIT: u32 = 0;
/// `RouteEntry::kind` of a denied route.
pub const ROUTE_DENY: u32 = 1;
/// `RouteEntry::kind` of a rate-limited route whose requests over the rate are dropped
/// (`over_limit: drop`), not reset.
pub const ROUTE_LIMIT_DROP: u32 = 2;

/// Value of the route trie: the route's rule id (its `RuleConfig` has the rate and mode)
/// and its kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteEntry {
    pub rule: u32,
    pub kind: u32,
}

/// The per-CPU scratch a route lookup key is built in (too large for the BPF stack), laid
/// out as an LPM trie key: the prefix length in bits, then the method code and the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteLookup {
    pub prefix_len: u32,
    pub data: [u8; ROUTE_KEY_BYTES],
}

/// Status codes a response rule may name are below this: `STATUS_RULES` is indexed by
/// the status code.
pub const STATUS_CODES: u32 = 600;
/// Response rules one status code may count toward at most (the slots of `StatusRules`).
pub const RULES_PER_STATUS: usize = 4;

/// Value of `STATUS_RULES`, indexed by status code: the ids of the response rules that
/// count a response with that status, 0 in unused slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusRules {
    pub rules: [u32; RULES_PER_STATUS],
}

/// Key of `RESET_FLOWS`: a TCP connection as its request segments carry it (source and
/// destination addresses, IPv4 as IPv4-mapped IPv6, then source and destination ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addrs: [u32; 8],
    pub ports: u32,
}

/// Value of `CHARGED`: the TCP sequence number of the last request on a connection that a
/// rate-limited route took a token for, and when (`bpf_ktime_get_coarse_ns`). A segment
/// with the same sequence number within `RESET_MEMORY_NS` is that request again (its
/// retransmission) and takes no second token.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charged {
    pub seq: u32,
    pub _pad: u32,
    pub at_ns: u64,
}

/// Value of `ACCEPTED`: a connection to an HTTP port whose SYN-ACK the server sent, that is
/// one it accepted (a passive open), with where the server's byte stream starts (its
/// initial sequence number + 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    pub server_start: u32,
    /// Where the client's byte stream starts (what the SYN-ACK acknowledges): its first
    /// request starts there.
    pub client_start: u32,
    /// 1 once a request of the client's acknowledged exactly `server_start` (the server had
    /// sent nothing yet): the client completed the handshake, which a spoofer, who never
    /// sees the SYN-ACK, cannot.
    pub client_verified: u32,
    pub _pad: u32,
}

/// Accepted connections remembered at most: the newest, and those whose responses were
/// counted lately (an LRU map keeps what it reads).
pub const ACCEPTED_ENTRIES: u32 = 131_072;

/// How long a reset connection is remembered: its client's retransmissions of the refused
/// request within this time are answered by the server's RST (see the kernel's `reset`).
pub const RESET_MEMORY_NS: u64 = 60_000_000_000;
/// Connections remembered at most.
pub const RESET_FLOWS_ENTRIES: u32 = 16384;

/// An HTTP/1.x request method. Codes are stable: they are in pinned route maps.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get = 1,
    Head = 2,
    Post = 3,
    Put = 4,
    Delete = 5,
    Connect = 6,
    Options = 7,
    Trace = 8,
    Patch = 9,
}

impl Method {
    pub const ALL: [Method; 9] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Options,
        Method::Trace,
        Method::Patch,
    ];
    /// Codes once used and retired: never given to a new method.
    pub const RETIRED: [u8; 0] = [];

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The method as it starts a request line (case-sensitive, RFC 9110 9.1).
    pub const fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    pub const fn from_code(code: u8) -> Option<Method> {
        match code {
            1 => Some(Method::Get),
            2 => Some(Method::Head),
            3 => Some(Method::Post),
            4 => Some(Method::Put),
            5 => Some(Method::Delete),
            6 => Some(Method::Connect),
            7 => Some(Method::Options),
            8 => Some(Method::Trace),
            9 => Some(Method::Patch),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method codes are in pinned maps: changing one breaks take-over by a newer agent.
    #[test]
    fn codes_and_names_are_stable() {
        let pinned = [
            (1, "GET"),
            (2, "HEAD"),
            (3, "POST"),
            (4, "PUT"),
            (5, "DELETE"),
            (6, "CONNECT"),
            (7, "OPTIONS"),
            (8, "TRACE"),
            (9, "PATCH"),
        ];
        assert_eq!(Method::ALL.len(), pinned.len());
        for (method, (code, name)) in Method::ALL.into_iter().zip(pinned) {
            assert_eq!((method.code(), method.name()), (code, name));
            assert_eq!(Method::from_code(code), Some(method));
            assert_eq!(Method::from_name(name), Some(method));
            assert!(!Method::RETIRED.contains(&code));
        }
        assert_eq!(Method::from_code(0), None);
        assert_eq!(Method::from_name("get"), None, "methods are case-sensitive");
    }
}
