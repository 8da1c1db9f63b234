//! Connections to HTTP ports the server accepted, seen on TC egress: the server's SYN-ACK
//! marks a passive open (`ACCEPTED`). A local process that binds an HTTP port's number and
//! connects out sends a SYN, never a SYN-ACK, so what it writes on that connection is no
//! response of the server's and counts toward nothing. The client's first request then
//! acknowledges the server's first byte, which only a client that saw the SYN-ACK knows:
//! requests on connections so verified charge their source's route bucket; others (spoofed
//! segments, connections older than the agent's notes) charge a pool shared by all of them
//! (`judge`).

use agent_common::http::{Accepted, FlowKey};

use crate::{frame::Frame, maps::ACCEPTED, parse::Packet};

/// Remembers the connection of `pkt`, a segment leaving from an HTTP port, if it is the
/// server's SYN-ACK; true if it was one.
#[inline(always)]
pub fn note_syn_ack<F: Frame>(frame: &F, pkt: &Packet) -> bool {
    if !pkt.syn_ack {
        return false;
    }
    // The sequence and acknowledgment numbers, 4 bytes into the TCP header.
    let mut numbers = [0u8; 8];
    if !frame.load(u32::from(pkt.l4_off) + 4, numbers.as_mut_ptr(), 8) {
        return true;
    }
    if let Some(flow) = frame.reply_connection(pkt) {
        let [s0, s1, s2, s3, a0, a1, a2, a3] = numbers;
        let accepted = Accepted {
            server_start: u32::from_be_bytes([s0, s1, s2, s3]).wrapping_add(1),
            client_start: u32::from_be_bytes([a0, a1, a2, a3]),
            client_verified: 0,
            _pad: 0,
        };
        // A full map forgets its least used: at worst an old connection's responses stop
        // counting and its requests charge the pool.
        let _ = ACCEPTED.insert(flow, accepted, 0);
    }
    true
}

/// True when `flow`, the connection of `pkt`, a request from a client to an HTTP port, is
/// one the server accepted and the client completed: a request on it acknowledged the
/// server's first byte (this one, or an earlier one). Asked at every request, so that the
/// first one, which acknowledges exactly that, marks the connection for those after it.
#[inline(always)]
pub fn client_verified<F: Frame>(frame: &F, pkt: &Packet, flow: &FlowKey) -> bool {
    let Some(accepted) = ACCEPTED.get_ptr_mut(flow) else {
        return false;
    };
    // SAFETY: a pointer from a successful lookup; the flag only ever goes from 0 to 1.
    unsafe {
        if (*accepted).client_verified != 0 {
            return true;
        }
        let mut ack = [0u8; 4];
        if !frame.load(u32::from(pkt.l4_off) + 8, ack.as_mut_ptr(), 4)
            || u32::from_be_bytes(ack) != (*accepted).server_start
        {
            return false;
        }
        (*accepted).client_verified = 1;
    }
    true
}

/// True when `pkt`, a client's data segment to an HTTP port that does not start with a
/// request line, carries the first bytes of a connection the client completed (it starts
/// the client's stream and acknowledges the server's first byte): where the first request
/// must start, the server will read something the kernel did not (a request line split
/// after a few bytes, CR/LF before the method, a method it does not know, a TAB for a
/// space).
#[inline(always)]
pub fn opens_without_a_request<F: Frame>(frame: &F, pkt: &Packet) -> bool {
    let Some((flow, seq)) = frame.connection(pkt) else {
        return false;
    };
    let Some(accepted) = ACCEPTED.get_ptr(flow) else {
        return false;
    };
    let mut ack = [0u8; 4];
    // SAFETY: a pointer from a successful lookup; reading two words another CPU only
    // writes whole.
    unsafe {
        seq == (*accepted).client_start
            && frame.load(u32::from(pkt.l4_off) + 8, ack.as_mut_ptr(), 4)
            && u32::from_be_bytes(ack) == (*accepted).server_start
    }
}

/// True when `pkt`, a segment leaving from an HTTP port, is on a connection the server
/// accepted.
#[inline(always)]
pub fn was_accepted<F: Frame>(frame: &F, pkt: &Packet) -> bool {
    frame
        .reply_connection(pkt)
        .is_some_and(|flow| ACCEPTED.get_ptr(flow).is_some())
}
