//! Why a frame was judged malformed: the counters under `Reason::Malformed`, by cause.
//! Codes are stable like reasons (metric labels, `stats` fields); a retired code stays
//! reserved (`MalformedCause::RETIRED`).

use crate::maps::MALFORMED_SLOTS;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MalformedCause {
    /// Shorter than an Ethernet header.
    TruncatedEthernet = 0,
    /// A VLAN tag cut short.
    TruncatedVlan = 1,
    /// Shorter than an IPv4 header.
    TruncatedIpv4 = 2,
    /// IPv4 version field not 4, or a header length under 20 bytes.
    BadIpv4Header = 3,
    /// IPv4 options longer than the frame.
    TruncatedIpv4Options = 4,
    /// Shorter than an IPv6 header.
    TruncatedIpv6 = 5,
    /// IPv6 version field not 6.
    BadIpv6Version = 6,
    /// An IPv6 extension header cut short.
    TruncatedExtensionHeader = 7,
    /// More IPv6 extension headers than the parser walks.
    TooManyExtensionHeaders = 8,
    /// A TCP header cut short.
    TruncatedTcp = 9,
    /// A TCP data offset under 5 words.
    BadTcpDataOffset = 10,
    /// A UDP header cut short.
    TruncatedUdp = 11,
    /// An ICMP or ICMPv6 header cut short.
    TruncatedIcmp = 12,
}

impl MalformedCause {
    pub const ALL: [MalformedCause; 13] = [
        MalformedCause::TruncatedEthernet,
        MalformedCause::TruncatedVlan,
        MalformedCause::TruncatedIpv4,
        MalformedCause::BadIpv4Header,
        MalformedCause::TruncatedIpv4Options,
        MalformedCause::TruncatedIpv6,
        MalformedCause::BadIpv6Version,
        MalformedCause::TruncatedExtensionHeader,
        MalformedCause::TooManyExtensionHeaders,
        MalformedCause::TruncatedTcp,
        MalformedCause::BadTcpDataOffset,
        MalformedCause::TruncatedUdp,
        MalformedCause::TruncatedIcmp,
    ];
    /// Codes once used and retired: never given to a new cause.
    pub const RETIRED: [u32; 0] = [];

    pub const fn code(self) -> u32 {
        self as u32
    }

    pub const fn from_code(code: u32) -> Option<MalformedCause> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == code {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Stable lowercase name: the `cause` label and the `stats` field.
    pub const fn name(self) -> &'static str {
        match self {
            MalformedCause::TruncatedEthernet => "truncated_ethernet",
            MalformedCause::TruncatedVlan => "truncated_vlan",
            MalformedCause::TruncatedIpv4 => "truncated_ipv4",
            MalformedCause::BadIpv4Header => "bad_ipv4_header",
            MalformedCause::TruncatedIpv4Options => "truncated_ipv4_options",
            MalformedCause::TruncatedIpv6 => "truncated_ipv6",
            MalformedCause::BadIpv6Version => "bad_ipv6_version",
            MalformedCause::TruncatedExtensionHeader => "truncated_extension_header",
            MalformedCause::TooManyExtensionHeaders => "too_many_extension_headers",
            MalformedCause::TruncatedTcp => "truncated_tcp",
            MalformedCause::BadTcpDataOffset => "bad_tcp_data_offset",
            MalformedCause::TruncatedUdp => "truncated_udp",
            MalformedCause::TruncatedIcmp => "truncated_icmp",
        }
    }

    /// True when the frame ended before a header did: on TC, where only part of the packet
    /// may be in the linear buffer, pulling more of it can settle the question.
    pub const fn is_truncation(self) -> bool {
        !matches!(
            self,
            MalformedCause::BadIpv4Header
                | MalformedCause::BadIpv6Version
                | MalformedCause::TooManyExtensionHeaders
                | MalformedCause::BadTcpDataOffset
        )
    }
}

// Every code, retired ones included, needs a counter slot.
const _: () = {
    let mut i = 0;
    while i < MalformedCause::ALL.len() {
        assert!((MalformedCause::ALL[i] as u32) < MALFORMED_SLOTS);
        i += 1;
    }
    let mut i = 0;
    while i < MalformedCause::RETIRED.len() {
        assert!(MalformedCause::RETIRED[i] < MALFORMED_SLOTS);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_stable() {
        let pinned = [
            (0, "truncated_ethernet"),
            (1, "truncated_vlan"),
            (2, "truncated_ipv4"),
            (3, "bad_ipv4_header"),
            (4, "truncated_ipv4_options"),
            (5, "truncated_ipv6"),
            (6, "bad_ipv6_version"),
            (7, "truncated_extension_header"),
            (8, "too_many_extension_headers"),
            (9, "truncated_tcp"),
            (10, "bad_tcp_data_offset"),
            (11, "truncated_udp"),
            (12, "truncated_icmp"),
        ];
        assert_eq!(MalformedCause::ALL.len(), pinned.len());
        for (cause, (code, name)) in MalformedCause::ALL.into_iter().zip(pinned) {
            assert_eq!((cause.code(), cause.name()), (code, name));
            assert_eq!(MalformedCause::from_code(code), Some(cause));
            assert!(
                !MalformedCause::RETIRED.contains(&code),
                "{code} is retired"
            );
        }
        assert_eq!(MalformedCause::from_code(13), None);
    }
}
