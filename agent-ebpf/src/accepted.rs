//! Connections to HTTP ports the server accepted, seen on TC egress: the server's SYN-ACK
//! marks a passive open (`ACCEPTED`). A local process that binds an HTTP port's number and
//! connects out sends a SYN, never a SYN-ACK, so what it writes on that connection is no
//! response of the server's and counts toward nothing. The client's first request then
//! acknowledges the server's first byte, which only a client that saw the SYN-ACK knows:
//! requests on connections so verified charge their source's route bucket; others (spoofed
//! segments, connections older than the agent's notes) charge a pool shared by all of them
//! (`judge`).

use agent_common::http::Accepted;

use crate::{frame::Frame, maps::ACCEPTED, parse::Packet, reset::Connection};

/// Remembers the connection of `pkt`, a segment leaving from an HTTP port, if it is the
/// server's SYN-ACK; true if it was one.
#[inline(always)]
pub fn note_syn_ack<F: Frame>(frame: &F, pkt: &Packet) -> bool {
    if !pkt.syn_ack {
        return false;
    }
    if let Some(connection) = frame.reply_connection(pkt) {
        let accepted = Accepted {
            server_start: connection.seq.wrapping_add(1),
            client_start: connection.ack,
            client_verified: 0,
            _pad: 0,
        };
        // A full map forgets its least used: at worst an old connection's responses stop
        // counting and its requests charge the pool.
        let _ = ACCEPTED.insert(connection.flow, accepted, 0);
    }
    true
}

/// True when `connection`, a client's request to an HTTP port, is on one the server
/// accepted and the client completed: a request on it acknowledged the server's first
/// byte (this one, or an earlier one). Asked at every request, so that the first one,
/// which acknowledges exactly that, marks the connection for those after it.
#[inline(always)]
pub fn client_verified(connection: &Connection) -> bool {
    let Some(accepted) = ACCEPTED.get_ptr_mut(connection.flow) else {
        return false;
    };
    // SAFETY: a pointer from a successful lookup; the flag only ever goes from 0 to 1.
    unsafe {
        if (*accepted).client_verified != 0 {
            return true;
        }
        if connection.ack != (*accepted).server_start {
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
    let Some(connection) = frame.connection(pkt) else {
        return false;
    };
    let Some(accepted) = ACCEPTED.get_ptr(connection.flow) else {
        return false;
    };
    // SAFETY: a pointer from a successful lookup; reading words another CPU only writes
    // whole.
    unsafe {
        connection.seq == (*accepted).client_start && connection.ack == (*accepted).server_start
    }
}

/// True when `pkt`, a segment leaving from an HTTP port, is on a connection the server
/// accepted.
#[inline(always)]
pub fn was_accepted<F: Frame>(frame: &F, pkt: &Packet) -> bool {
    frame
        .reply_connection(pkt)
        .is_some_and(|connection| ACCEPTED.get_ptr(connection.flow).is_some())
}
