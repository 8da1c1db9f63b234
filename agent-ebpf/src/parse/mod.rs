//! Header parsing on a bounds-checked cursor. Every read checks the frame's end first: the
//! verifier rejects any packet access it cannot prove in bounds, and a short frame must end
//! in a documented verdict, never a fault.

use agent_common::MalformedCause;

pub mod eth;
pub mod ip;
pub mod l4;

/// What the judge needs to know about an IP packet.
///
/// Laid out without padding (wider fields first, sizes asserted below): the judge takes it
/// as a global function's argument, which the verifier checks byte for byte.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Packet {
    /// Source address; IPv4 as IPv4-mapped IPv6, bytes in network order.
    pub src: [u32; 4],
    /// The source is known but the headers after it are truncated or invalid, and why.
    pub malformed: Option<MalformedCause>,
    /// Destination port in host order, 0 when `has_port` is false.
    pub dport: u16,
    /// Offset of the TCP payload from the frame's start (past the TCP options); 0 for
    /// other protocols and fragments without the TCP header.
    pub payload_off: u16,
    /// Offsets of the IP header and of the TCP header (0 without one), and whether the IP
    /// header is IPv6 (an IPv4-mapped source has `v4` set on an IPv6 header): what a
    /// segment's rewrite into a reset needs.
    pub l3_off: u16,
    pub l4_off: u16,
    pub ip6: bool,
    /// The source is an IPv4 host: an IPv4 packet, or an IPv6 one from an IPv4-mapped
    /// address. Lookups go to the IPv4 maps with `src[3]`.
    pub v4: bool,
    /// IP protocol number of the transport header (after IPv6 extension headers).
    pub protocol: u8,
    /// One of the `agent_common::CLASS_*` values.
    pub class: u8,
    /// False for non-first fragments and protocols without ports.
    pub has_port: bool,
    /// TCP SYN without ACK: a new connection attempt.
    pub syn: bool,
    /// The first fragment of a fragmented packet (more follow): a refused request in it is
    /// dropped, since rewritten into a RST it would still claim more fragments.
    pub more_fragments: bool,
    /// TCP SYN and ACK: a server accepting a connection (TC egress notes it).
    pub syn_ack: bool,
}

const _: () = assert!(core::mem::size_of::<Option<MalformedCause>>() == 4);
const _: () = assert!(core::mem::size_of::<Packet>() == 36);

/// The most bytes the parser reads: Ethernet, two VLAN tags, IPv6, the longest chain of
/// extension headers it walks, and a TCP header. IPv4 (at most 60 bytes) needs less.
pub const MAX_HEADER_BYTES: u32 = (eth::MAX_BYTES
    + ip::IPV6_HEADER_BYTES
    + ip::MAX_IPV6_EXT_HEADERS * ip::MAX_EXT_HEADER_BYTES
    + l4::MAX_BYTES) as u32;

pub enum Parsed {
    /// Not IPv4 or IPv6.
    NotIp,
    /// Claims to be IP but is too short or invalid to read the source address from.
    Malformed(MalformedCause),
    Ip(Packet),
}

impl Parsed {
    /// True when the frame ended before its headers did.
    #[inline(always)]
    pub fn truncated(&self) -> bool {
        match self {
            Parsed::NotIp => false,
            Parsed::Malformed(cause) => cause.is_truncation(),
            Parsed::Ip(pkt) => pkt.malformed.is_some_and(MalformedCause::is_truncation),
        }
    }
}

/// Parses a frame that starts with an Ethernet header.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Parsed {
    let mut cursor = Cursor {
        start: data,
        pos: data,
        end: data_end,
    };
    match eth::ethertype(&mut cursor) {
        Err(cause) => Parsed::Malformed(cause),
        Ok(eth::ETH_P_IP) => ip::parse_v4(&mut cursor),
        Ok(eth::ETH_P_IPV6) => ip::parse_v6(&mut cursor),
        Ok(_) => Parsed::NotIp,
    }
}

/// A read position in the frame.
pub struct Cursor {
    /// The frame's first byte, to tell offsets.
    pub start: usize,
    pub pos: usize,
    pub end: usize,
}

impl Cursor {
    /// Returns a pointer to a `T` at the cursor and moves past it, or `None` if the frame
    /// ends first.
    #[inline(always)]
    pub fn take<T>(&mut self) -> Option<*const T> {
        let start = self.pos;
        let next = start + core::mem::size_of::<T>();
        if next > self.end {
            return None;
        }
        self.pos = next;
        Some(start as *const T)
    }

    /// Moves past `len` bytes. Callers bound `len` by a constant first, so the verifier
    /// knows the offset range of the packet pointer.
    #[inline(always)]
    pub fn skip(&mut self, len: usize) -> Option<()> {
        let next = self.pos + len;
        if next > self.end {
            return None;
        }
        self.pos = next;
        Some(())
    }
}
