//! IPv4 (with options and fragments) and IPv6 (with a bounded walk of extension headers).

use agent_common::{CLASS_OTHER, MalformedCause};

use super::{Cursor, Packet, Parsed, l4};

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;

/// Extension headers walked before giving up. Real traffic carries one or two; a longer
/// chain (another extension header after these) is treated as malformed so that stacking
/// headers cannot hide the transport header from port-scoped rules.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// The longest extension header: a generic one with the largest length byte (255 + 1
/// units of 8 bytes); AH's units are smaller.
pub const MAX_EXT_HEADER_BYTES: usize = 256 * 8;
pub const IPV6_HEADER_BYTES: usize = core::mem::size_of::<Ipv6Hdr>();
/// An IPv4 header without options.
pub const IPV4_HEADER_BYTES: usize = core::mem::size_of::<Ipv4Hdr>();

/// IPv4-mapped IPv6 prefix word `::ffff:0:0/96`, bytes 8..12, in network order.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

/// The first two bytes of every "generic" extension header (hop-by-hop, routing,
/// destination options, mobility, HIP, shim6, and AH with a different length unit).
#[repr(C)]
struct ExtHdr {
    nexthdr: u8,
    hdrlen: u8,
}

#[repr(C)]
struct FragHdr {
    nexthdr: u8,
    reserved: u8,
    frag_off: u16,
    id: u32,
}

fn packet(src: [u32; 4], v4: bool, protocol: u8) -> Packet {
    Packet {
        src,
        v4,
        protocol,
        class: CLASS_OTHER,
        has_port: false,
        dport: 0,
        syn: false,
        malformed: None,
        payload_off: 0,
        l3_off: 0,
        l4_off: 0,
        ip6: false,
        more_fragments: false,
        syn_ack: false,
    }
}

#[inline(always)]
pub fn parse_v4(cursor: &mut Cursor) -> Parsed {
    // At most the Ethernet header and two VLAN tags.
    let l3_off = (cursor.pos - cursor.start) as u16;
    let Some(hdr) = cursor.take::<Ipv4Hdr>() else {
        return Parsed::Malformed(MalformedCause::TruncatedIpv4);
    };
    // SAFETY: `take` checked that the header lies inside the frame.
    let hdr = unsafe { &*hdr };
    let ihl = (hdr.version_ihl & 0x0f) as usize;
    if hdr.version_ihl >> 4 != 4 || ihl < 5 {
        return Parsed::Malformed(MalformedCause::BadIpv4Header);
    }
    // Options: ihl is at most 15, so this skips at most 40 bytes.
    if cursor.skip((ihl - 5) * 4).is_none() {
        return Parsed::Malformed(MalformedCause::TruncatedIpv4Options);
    }
    let mut pkt = packet([0, 0, V4_MAPPED_WORD, hdr.saddr], true, hdr.protocol);
    pkt.l3_off = l3_off;
    // Only the first fragment (offset 0) carries the transport header; later fragments are
    // judged on their addresses and protocol.
    let frag_off = u16::from_be(hdr.frag_off);
    let first_fragment = frag_off & 0x1fff == 0;
    pkt.more_fragments = first_fragment && frag_off & 0x2000 != 0;
    l4::parse(cursor, &mut pkt, first_fragment);
    Parsed::Ip(pkt)
}

#[inline(always)]
pub fn parse_v6(cursor: &mut Cursor) -> Parsed {
    let l3_off = (cursor.pos - cursor.start) as u16;
    let Some(hdr) = cursor.take::<Ipv6Hdr>() else {
        return Parsed::Malformed(MalformedCause::TruncatedIpv6);
    };
    // SAFETY: `take` checked that the header lies inside the frame.
    let hdr = unsafe { &*hdr };
    if u32::from_be(hdr.version_class_flow) >> 28 != 6 {
        return Parsed::Malformed(MalformedCause::BadIpv6Version);
    }
    let mut pkt = packet(hdr.saddr, false, hdr.nexthdr);
    pkt.l3_off = l3_off;
    pkt.ip6 = true;
    match walk_extension_headers(cursor, hdr.nexthdr, &mut pkt.more_fragments) {
        Ok(Transport::Header(protocol)) => {
            pkt.protocol = protocol;
            l4::parse(cursor, &mut pkt, true);
        }
        Ok(Transport::LaterFragment(protocol)) => {
            pkt.protocol = protocol;
            l4::parse(cursor, &mut pkt, false);
        }
        Err(cause) => pkt.malformed = Some(cause),
    }
    // An IPv4-mapped source (::ffff:a.b.c.d) is judged as the IPv4 host it names: by the
    // IPv4 lists, bans and buckets, which its address already has the key layout of. Set
    // after the transport header, which is parsed as IPv6's (ICMPv6, not ICMP).
    if hdr.saddr[0] == 0 && hdr.saddr[1] == 0 && hdr.saddr[2] == V4_MAPPED_WORD {
        pkt.v4 = true;
    }
    Parsed::Ip(pkt)
}

enum Transport {
    /// The cursor is at the transport header of this protocol.
    Header(u8),
    /// A non-first fragment of this protocol: no transport header here.
    LaterFragment(u8),
}

/// True for the extension headers the walk knows (every other number is a transport
/// protocol, or one we do not parse).
#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_HIP
            | IPPROTO_SHIM6
            | IPPROTO_AH
            | IPPROTO_FRAGMENT
    )
}

/// Moves the cursor past the extension headers. An error if one is truncated, or if
/// another extension header follows the `MAX_IPV6_EXT_HEADERS`th (it is not read). A first
/// fragment's M flag goes to `more_fragments`, the packet's field: kept in memory, not in
/// the walk's own state, so the verifier does not walk the rest of the chain twice.
#[inline(always)]
fn walk_extension_headers(
    cursor: &mut Cursor,
    first: u8,
    more_fragments: &mut bool,
) -> Result<Transport, MalformedCause> {
    const TRUNCATED: MalformedCause = MalformedCause::TruncatedExtensionHeader;
    let mut next = first;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_HIP
            | IPPROTO_SHIM6 => {
                let ext = cursor.take::<ExtHdr>().ok_or(TRUNCATED)?;
                // SAFETY: `take` checked the bounds.
                let ext = unsafe { &*ext };
                next = ext.nexthdr;
                // Length in 8-byte units, not counting the first 8; at most 2048 bytes.
                cursor
                    .skip((ext.hdrlen as usize + 1) * 8 - 2)
                    .ok_or(TRUNCATED)?;
            }
            IPPROTO_AH => {
                let ext = cursor.take::<ExtHdr>().ok_or(TRUNCATED)?;
                // SAFETY: `take` checked the bounds.
                let ext = unsafe { &*ext };
                next = ext.nexthdr;
                // RFC 4302: length in 4-byte units, minus 2; at most 1028 bytes.
                cursor
                    .skip((ext.hdrlen as usize + 2) * 4 - 2)
                    .ok_or(TRUNCATED)?;
            }
            IPPROTO_FRAGMENT => {
                let frag = cursor.take::<FragHdr>().ok_or(TRUNCATED)?;
                // SAFETY: `take` checked the bounds.
                let frag = unsafe { &*frag };
                next = frag.nexthdr;
                let frag_off = u16::from_be(frag.frag_off);
                if frag_off & 0xfff8 != 0 {
                    return Ok(Transport::LaterFragment(next));
                }
                // The M flag: more fragments follow this first one.
                // SAFETY: writing a field of the caller's packet.
                unsafe { core::ptr::write_volatile(more_fragments, frag_off & 1 != 0) };
            }
            _ => return Ok(Transport::Header(next)),
        }
    }
    if is_extension_header(next) {
        return Err(MalformedCause::TooManyExtensionHeaders);
    }
    Ok(Transport::Header(next))
}
