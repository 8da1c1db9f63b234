//! Transport headers: destination port for TCP and UDP, SYN for TCP, class for rules.

use agent_common::{CLASS_ICMP, CLASS_TCP, CLASS_UDP, MalformedCause};

use super::{Cursor, Packet};

const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// The longest header this module reads (TCP's, without options).
pub const MAX_BYTES: usize = core::mem::size_of::<TcpHdr>();

#[repr(C)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: u32,
    ack_seq: u32,
    /// Data offset in the high nibble.
    doff_reserved: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

#[repr(C)]
struct UdpHdr {
    sport: u16,
    dport: u16,
    len: u16,
    check: u16,
}

/// ICMP and ICMPv6 share this 8-byte layout; the kernel needs all 8 bytes too.
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// Fills in the class, port and SYN flag. `first_fragment` is false when the transport
/// header is not in this packet. A header cut short marks the packet malformed.
#[inline(always)]
pub fn parse(cursor: &mut Cursor, pkt: &mut Packet, first_fragment: bool) {
    let v4 = pkt.v4;
    match pkt.protocol {
        IPPROTO_TCP => {
            pkt.class = CLASS_TCP;
            if !first_fragment {
                return;
            }
            let header_off = cursor.pos - cursor.start;
            let Some(tcp) = cursor.take::<TcpHdr>() else {
                pkt.malformed = Some(MalformedCause::TruncatedTcp);
                return;
            };
            // SAFETY: `take` checked the bounds.
            let tcp = unsafe { &*tcp };
            if tcp.doff_reserved >> 4 < 5 {
                pkt.malformed = Some(MalformedCause::BadTcpDataOffset);
                return;
            }
            pkt.has_port = true;
            pkt.dport = u16::from_be(tcp.dport);
            pkt.syn = tcp.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
            pkt.syn_ack = tcp.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK;
            // At most MAX_HEADER_BYTES + 60: fits a u16.
            pkt.payload_off = (header_off + usize::from(tcp.doff_reserved >> 4) * 4) as u16;
            pkt.l4_off = header_off as u16;
        }
        IPPROTO_UDP => {
            pkt.class = CLASS_UDP;
            if !first_fragment {
                return;
            }
            let Some(udp) = cursor.take::<UdpHdr>() else {
                pkt.malformed = Some(MalformedCause::TruncatedUdp);
                return;
            };
            pkt.has_port = true;
            // SAFETY: `take` checked the bounds.
            pkt.dport = u16::from_be(unsafe { (*udp).dport });
        }
        IPPROTO_ICMP if v4 => icmp(cursor, pkt, first_fragment),
        IPPROTO_ICMPV6 if !v4 => icmp(cursor, pkt, first_fragment),
        _ => {}
    }
}

#[inline(always)]
fn icmp(cursor: &mut Cursor, pkt: &mut Packet, first_fragment: bool) {
    pkt.class = CLASS_ICMP;
    if first_fragment && cursor.take::<IcmpHdr>().is_none() {
        pkt.malformed = Some(MalformedCause::TruncatedIcmp);
    }
}
