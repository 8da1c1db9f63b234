//! Refusing an HTTP request (or any segment of a banned client's connection) without
//! leaving anyone waiting. The segment is rewritten in place into a bare RST with its own
//! sequence number and passed up: the server's stack takes it (its sequence number is the
//! next byte the server expects, as RFC 5961 wants of a RST) and frees the connection. The
//! connection is remembered (`RESET_FLOWS`), and the client's later segments on it (the
//! request's retransmissions, an ACK, a FIN) are passed on as bare ACKs, without payload:
//! the server, which has no connection for them any more, answers each with a RST, so the
//! client sees the reset too. (Were they turned into RSTs
//! as well, the server would drop them silently, and the client would retransmit until it
//! gave up.) A dropped segment would leave the client retransmitting and the server's
//! socket waiting.
//!
//! The caller first cuts the frame to end 20 bytes into the TCP header (XDP:
//! `bpf_xdp_adjust_tail`, TC: `bpf_skb_change_tail`); `rewrite` then fixes the headers of
//! what is left: TCP options and payload gone, IP length, both checksums.

use agent_common::http::{Charged, FlowKey, RESET_MEMORY_NS};

use crate::{
    clock,
    maps::{CHARGED, RESET_FLOWS},
    parse::{
        self, Packet, Parsed,
        ip::{IPV4_HEADER_BYTES, IPV6_HEADER_BYTES, V4_MAPPED_WORD},
        l4::{self, IPPROTO_TCP, TCP_FLAG_ACK},
    },
};

/// The TCP header without options: all a RST keeps.
const TCP_HEADER: usize = l4::MAX_BYTES;
const TCP_FLAG_RST: u8 = 0x04;
/// Bounds on the header offsets the parser produces, as masks the verifier follows.
const MAX_L3_OFF: usize = 0x7f;
const MAX_L4_OFF: usize = 0x7fff;

/// A TCP segment's connection and its sequence and acknowledgment numbers.
pub struct Connection {
    pub flow: FlowKey,
    pub seq: u32,
    pub ack: u32,
}

/// Where a segment's headers are, and whether it is the first refusal on its connection.
pub struct Segment {
    l3_off: usize,
    l4_off: usize,
    ip6: bool,
    first: bool,
}

impl Segment {
    /// The headers of `pkt`, as a first refusal.
    #[inline(always)]
    fn at(pkt: &Packet) -> Segment {
        // Masks rather than comparisons: the verifier then bounds the very register a
        // pointer is made from (LLVM may compare a copy); real offsets are below both.
        Segment {
            l3_off: usize::from(pkt.l3_off) & MAX_L3_OFF,
            l4_off: usize::from(pkt.l4_off) & MAX_L4_OFF,
            ip6: pkt.ip6,
            first: true,
        }
    }

    /// The TCP segment in the frame at `[data, data_end)`, parsed again: the judge does not
    /// carry header offsets through every path for the few frames it resets (the verifier
    /// then could not prune its states).
    #[inline(always)]
    pub fn of(data: usize, data_end: usize) -> Option<Segment> {
        let Parsed::Ip(pkt) = parse::parse(data, data_end) else {
            return None;
        };
        let mut segment = Segment::at(&pkt);
        if segment.l4_off == 0 {
            return None;
        }
        let flow = segment.flow(data, data_end)?;
        let now = clock::coarse_ns();
        if let Some(reset_at) = RESET_FLOWS.get_ptr(flow) {
            // SAFETY: a pointer from a successful lookup.
            segment.first = now.saturating_sub(unsafe { *reset_at }) >= RESET_MEMORY_NS;
        }
        if segment.first {
            // A full map forgets its oldest: at worst a retransmission is reset again.
            let _ = RESET_FLOWS.insert(flow, now, 0);
        }
        Some(segment)
    }

    /// The connection of the TCP segment `pkt` (in the frame at `[data, data_end)`) and
    /// the segment's sequence and acknowledgment numbers.
    #[inline(always)]
    pub fn connection(data: usize, data_end: usize, pkt: &Packet) -> Option<Connection> {
        let segment = Segment::at(pkt);
        if segment.l4_off == 0 {
            return None;
        }
        let flow = segment.flow(data, data_end)?;
        let tcp = data + segment.l4_off;
        if tcp + 12 > data_end {
            return None;
        }
        // SAFETY: inside the bounds just checked.
        let (seq, ack) = unsafe {
            (
                u32::from_be(((tcp + 4) as *const u32).read_unaligned()),
                u32::from_be(((tcp + 8) as *const u32).read_unaligned()),
            )
        };
        Some(Connection { flow, seq, ack })
    }

    /// As `connection`, for a server's segment: its connection as the client's segments
    /// name it (addresses and ports swapped).
    #[inline(always)]
    pub fn reply_connection(data: usize, data_end: usize, pkt: &Packet) -> Option<Connection> {
        let mut connection = Self::connection(data, data_end, pkt)?;
        connection.flow.addrs.rotate_left(4);
        // The two ports, as they lie in memory, swapped.
        connection.flow.ports = connection.flow.ports.rotate_left(16);
        Some(connection)
    }

    /// True when `flow` was reset by a refusal within `RESET_MEMORY_NS`: a segment on it
    /// is the client's retransmission of what was refused (the server has no connection).
    #[inline(always)]
    pub fn recently_reset(flow: &FlowKey) -> bool {
        match RESET_FLOWS.get_ptr(flow) {
            // SAFETY: a pointer from a successful lookup.
            Some(reset_at) => {
                clock::coarse_ns().saturating_sub(unsafe { *reset_at }) < RESET_MEMORY_NS
            }
            None => false,
        }
    }

    /// True when a rate-limited route already took a token for the request starting at
    /// `seq` on `flow`, within `RESET_MEMORY_NS`: this segment is its retransmission.
    #[inline(always)]
    pub fn already_charged(flow: &FlowKey, seq: u32) -> bool {
        match CHARGED.get_ptr(flow) {
            // SAFETY: a pointer from a successful lookup; another CPU's write meanwhile
            // only makes this answer about the previous request.
            Some(charged) => unsafe {
                (*charged).seq == seq
                    && clock::coarse_ns().saturating_sub((*charged).at_ns) < RESET_MEMORY_NS
            },
            None => false,
        }
    }

    /// Remembers that a route took a token for the request starting at `seq` on `flow`.
    #[inline(always)]
    pub fn charged(flow: &FlowKey, seq: u32) {
        let charged = Charged {
            seq,
            _pad: 0,
            at_ns: clock::coarse_ns(),
        };
        // A full map forgets its oldest: at worst a retransmission is charged again.
        let _ = CHARGED.insert(flow, charged, 0);
    }

    /// The segment's connection: addresses and ports from its headers.
    #[inline(always)]
    fn flow(&self, data: usize, data_end: usize) -> Option<FlowKey> {
        let l3 = data + self.l3_off;
        let tcp = data + self.l4_off;
        let ip_header = if self.ip6 {
            IPV6_HEADER_BYTES
        } else {
            IPV4_HEADER_BYTES
        };
        if tcp + 4 > data_end || l3 + ip_header > data_end {
            return None;
        }
        let mut flow = FlowKey::default();
        // SAFETY: the reads below are inside the bounds checked above.
        unsafe {
            flow.ports = (tcp as *const u32).read_unaligned();
            if self.ip6 {
                for i in 0..8 {
                    flow.addrs[i] = ((l3 + 8 + 4 * i) as *const u32).read_unaligned();
                }
            } else {
                flow.addrs[2] = V4_MAPPED_WORD;
                flow.addrs[3] = ((l3 + 12) as *const u32).read_unaligned();
                flow.addrs[6] = V4_MAPPED_WORD;
                flow.addrs[7] = ((l3 + 16) as *const u32).read_unaligned();
            }
        }
        Some(flow)
    }

    /// The frame length the segment is cut to before `rewrite`: its TCP header's first
    /// 20 bytes are the last.
    #[inline(always)]
    pub fn cut_len(&self) -> u32 {
        (self.l4_off + TCP_HEADER) as u32
    }

    /// Rewrites the frame at `[data, data_end)`, already cut to `cut_len`, into a RST (or,
    /// for a retransmission, a bare ACK); false when it is not what the segment describes
    /// (then it is dropped).
    #[inline(always)]
    pub fn rewrite(&self, data: usize, data_end: usize) -> bool {
        let (l3_off, l4_off) = (self.l3_off, self.l4_off);
        let l3 = data + l3_off;
        let tcp = data + l4_off;
        // (The frame ends right there, cut so by the caller; the verifier learns bounds
        // from ordered comparisons only.)
        if tcp + TCP_HEADER > data_end {
            return false;
        }
        // SAFETY: every access below is inside [data, data_end): the TCP header was
        // checked just above, the IP header is checked before it is touched.
        unsafe {
            let flags = (tcp + 13) as *mut u8;
            // The data offset: 5 words, no options; the reserved bits cleared.
            *((tcp + 12) as *mut u8) = 5 << 4;
            // The first refusal resets the server's side; a retransmission goes on as a
            // bare ACK, for the server's stack to answer with a RST.
            *flags = if self.first {
                TCP_FLAG_RST | (*flags & TCP_FLAG_ACK)
            } else {
                TCP_FLAG_ACK
            };
            // Urgent pointer, then the checksum, zeroed for the sum.
            ((tcp + 18) as *mut u16).write_unaligned(0);
            ((tcp + 16) as *mut u16).write_unaligned(0);
            let ip_len = (l4_off + TCP_HEADER - l3_off) as u16;
            let upper_layer = TCP_HEADER as u32 + u32::from(IPPROTO_TCP);
            let pseudo = if self.ip6 {
                if l3 + IPV6_HEADER_BYTES > data_end {
                    return false;
                }
                // Payload length: the extension headers and the TCP header.
                ((l3 + 4) as *mut u16).write_unaligned((ip_len - IPV6_HEADER_BYTES as u16).to_be());
                // Source and destination, then the upper-layer length and next header.
                sum_words(l3 + 8, 16) + upper_layer
            } else {
                if l3 + IPV4_HEADER_BYTES > data_end {
                    return false;
                }
                let total_len = (l3 + 2) as *mut u16;
                let check = (l3 + 10) as *mut u16;
                let old = u16::from_be(total_len.read_unaligned());
                total_len.write_unaligned(ip_len.to_be());
                // RFC 1624: HC' = ~(~HC + ~m + m').
                let sum = u32::from(!u16::from_be(check.read_unaligned()))
                    + u32::from(!old)
                    + u32::from(ip_len);
                check.write_unaligned(fold(sum).to_be());
                sum_words(l3 + 12, 4) + upper_layer
            };
            let sum = pseudo + sum_words(tcp, TCP_HEADER / 2);
            ((tcp + 16) as *mut u16).write_unaligned(fold(sum).to_be());
        }
        true
    }
}

/// Ones'-complement sum of the big-endian 16-bit words at `at`, `words` of them.
///
/// # Safety
/// `at .. at + 2 * words` lies inside the packet (checked by the caller).
#[inline(always)]
unsafe fn sum_words(at: usize, words: usize) -> u32 {
    let mut sum = 0u32;
    for i in 0..words {
        // SAFETY: as the caller promises.
        sum += u32::from(u16::from_be(unsafe {
            ((at + 2 * i) as *const u16).read_unaligned()
        }));
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
