//! HTTP/1.x requests on HTTP ports: a segment whose payload starts a request line
//! ("METHOD target ...") has its method and the first `TARGET_WINDOW` bytes of its target
//! looked up in the route trie (`agent_common::http`), one lookup whatever the number of
//! routes. Segments that start no request (ACKs, body, responses) cost one 8-byte read,
//! which also recognises the HTTP/2 cleartext preface.

use agent_common::http::{Method, ROUTE_KEY_BYTES, RouteEntry, RouteLookup, TARGET_WINDOW};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{frame::Frame, maps::ROUTE_SCRATCH, parse::Packet, policy_set::PolicySet};

/// "METHOD " as it starts a request line, little-endian in a u64 (the first eight bytes of
/// the payload), with the mask of its bytes.
const fn pattern(method: Method) -> (u64, u64) {
    let name = method.name().as_bytes();
    let mut value = 0u64;
    let mut i = 0;
    while i < name.len() {
        value |= (name[i] as u64) << (8 * i);
        i += 1;
    }
    value |= (b' ' as u64) << (8 * i);
    let bytes = name.len() + 1;
    let mask = if bytes == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * bytes)) - 1
    };
    (value, mask)
}

/// The method a payload's first eight bytes start a request line with, and the length of
/// its name. An explicit chain of immediates: a table indexed in a loop would become a
/// `.rodata` map.
#[inline(always)]
fn method_of(word: u64) -> Option<(Method, u32)> {
    macro_rules! starts_with {
        ($($method:ident),*) => {
            $(
                let (value, mask) = const { pattern(Method::$method) };
                if word & mask == value {
                    return Some((Method::$method, Method::$method.name().len() as u32));
                }
            )*
        };
    }
    starts_with!(Get, Post, Put, Head, Delete, Patch, Options, Connect, Trace);
    None
}

/// "PRI * HT": the first eight bytes of the HTTP/2 cleartext connection preface
/// (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), little-endian.
const H2C_PREFACE: u64 = u64::from_le_bytes(*b"PRI * HT");

/// What a segment's payload on an HTTP port starts.
pub enum Start {
    /// A request line. `route`: the route its method and target match, if one does;
    /// `target_len`: the bytes of target read into the route scratch (for `evasion`).
    Request {
        route: Option<RouteEntry>,
        target_len: u32,
    },
    /// The HTTP/2 cleartext connection preface.
    H2cPreface,
    /// No request: an ACK, body bytes, anything else.
    Other,
}

/// What `pkt`'s payload starts; for a request, its route looked up.
#[inline(always)]
pub fn read<F: Frame, const S: bool>(frame: &F, policy: PolicySet<S>, pkt: &Packet) -> Start {
    let payload = u32::from(pkt.payload_off);
    if payload == 0 {
        return Start::Other;
    }
    let mut first = [0u8; 8];
    if !frame.load(payload, first.as_mut_ptr(), 8) {
        return Start::Other;
    }
    let word = u64::from_le_bytes(first);
    if word == H2C_PREFACE {
        // An event about it carries no request.
        scratch_holds(0, 0);
        return Start::H2cPreface;
    }
    let Some((method, name_len)) = method_of(word) else {
        return Start::Other;
    };
    match route(frame, policy, payload + name_len + 1, method) {
        Some((route, target_len)) => Start::Request { route, target_len },
        // Nothing of the target could be read (the segment ends after "METHOD ").
        None => {
            scratch_holds(method.code(), 0);
            Start::Request {
                route: None,
                target_len: 0,
            }
        }
    }
}

/// Makes the route scratch hold `method` and no target byte (`method` 0: nothing), for
/// an event about this packet to carry no earlier packet's request.
#[inline(always)]
fn scratch_holds(method: u8, target_len: u32) {
    if let Some(scratch) = ROUTE_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch, from a successful lookup.
        unsafe {
            (*scratch).data[0] = method;
            (*scratch).prefix_len = if method == 0 { 0 } else { 8 * (1 + target_len) };
        }
    }
}

/// Reads the request target at `target` into the route scratch, after `method`'s code, and
/// looks it up: the route (if one matches) and the bytes read; `None` if none could be.
#[inline(always)]
fn route<F: Frame, const S: bool>(
    frame: &F,
    policy: PolicySet<S>,
    target: u32,
    method: Method,
) -> Option<(Option<RouteEntry>, u32)> {
    let available = frame.len().checked_sub(target)?;
    // At least one byte, at most the window, checked on the very register the helper gets:
    // without the volatile read LLVM bounds a 32-bit copy of the length and passes the
    // helper the unbounded original, which the verifier refuses.
    let wanted = u64::from(available.min(TARGET_WINDOW as u32));
    // SAFETY: reading a local.
    let len = unsafe { core::ptr::read_volatile(&wanted) };
    if len == 0 || len > TARGET_WINDOW as u64 {
        return None;
    }
    let len = len as u32;
    let scratch = ROUTE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a pointer from a successful lookup into this CPU's scratch value, which is
    // `size_of::<RouteLookup>()` bytes: the method byte and `len` <= TARGET_WINDOW bytes
    // after it fit.
    unsafe {
        let lookup: &mut RouteLookup = &mut *scratch;
        lookup.data[0] = method.code();

        if !frame.load(target, lookup.data.as_mut_ptr().add(1), len) {
            return None;
        }
        // Bytes past `len` are left from an earlier packet: the trie only compares the
        // first `prefix_len` bits.
        lookup.prefix_len = 8 * (1 + len);
        let key = &*(scratch as *const Key<[u8; ROUTE_KEY_BYTES]>);
        Some((policy.routes().get(key).copied(), len))
    }
}
