//! Ethernet and up to two VLAN tags (802.1Q and 802.1ad, in either order).

use agent_common::MalformedCause;

use super::Cursor;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// More tags than this leave a VLAN ethertype behind, which is not IP: the frame passes
/// as `NotIp`, like any other protocol we do not parse.
const MAX_VLAN_TAGS: usize = 2;

/// Ethernet and the VLAN tags: the most this module reads.
pub const MAX_BYTES: usize =
    core::mem::size_of::<EthHdr>() + MAX_VLAN_TAGS * core::mem::size_of::<VlanHdr>();

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: u16,
}

#[repr(C)]
struct VlanHdr {
    tci: u16,
    inner_ethertype: u16,
}

/// Returns the ethertype after the VLAN tags, or why the frame is too short for them.
#[inline(always)]
pub fn ethertype(cursor: &mut Cursor) -> Result<u16, MalformedCause> {
    let eth = cursor
        .take::<EthHdr>()
        .ok_or(MalformedCause::TruncatedEthernet)?;
    // SAFETY: `take` checked that the header lies inside the frame.
    let mut ethertype = u16::from_be(unsafe { (*eth).ethertype });
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let vlan = cursor
            .take::<VlanHdr>()
            .ok_or(MalformedCause::TruncatedVlan)?;
        // SAFETY: as above.
        ethertype = u16::from_be(unsafe { (*vlan).inner_ethertype });
    }
    Ok(ethertype)
}
