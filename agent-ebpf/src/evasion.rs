//! `http.strict`: request targets the route lookup cannot judge as the server will read
//! them. A server normalises the path before it routes (RFC 3986 5.2.4 removes dot
//! segments; percent-encoded unreserved bytes decode; many servers merge `//`), while the
//! trie compares raw bytes; and a path whose end the kernel does not see (cut by the
//! segment, or longer than the window) may hide such a shape past what was read.
//!
//! Evasive, within the path (up to the first space or `?`):
//! - a target that does not start with `/` (absolute form, `http://host/path`), except `*`;
//! - an empty or dot segment: `//`, `/./`, `/../`, or a path ending in `/.` or `/..`;
//! - a percent-encoded unreserved byte (`A-Z a-z 0-9 - . _ ~`) or `/`, in either case of
//!   hex digit, or a `%` not followed by two hex digits;
//! - a `#`: a fragment is never sent, and servers end the path there while the route
//!   lookup reads on;
//! - no end of the path within the bytes read.
//!
//! Other percent-encodings (`%20`) are ordinary. The query is not read.

use agent_common::http::TARGET_WINDOW;

use crate::maps::ROUTE_SCRATCH;

/// True (1) when the target read into this CPU's route scratch, `len` bytes after the
/// method code, is evasive (see the module). A global function: the verifier checks its
/// byte loop once, on its own, not once per path of the judge.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portcullis_evasive_target(len: u32) -> u32 {
    let Some(lookup) = ROUTE_SCRATCH.get_ptr(0) else {
        return 0;
    };
    // SAFETY: a pointer from a successful lookup into this CPU's scratch, which nothing
    // else touches while this program runs.
    let lookup = unsafe { &*lookup };
    let target = &lookup.data[1..];
    let len = (len as usize).min(TARGET_WINDOW);
    u32::from(evasive(target, len))
}

#[inline(always)]
fn evasive(target: &[u8], len: usize) -> bool {
    let Some(&first) = target.first() else {
        return true;
    };
    if len == 0 {
        return true;
    }
    if first != b'/' {
        // Only `*` (OPTIONS *) is a target of another form that names no path.
        return !(first == b'*' && len >= 2 && target.get(1) == Some(&b' '));
    }
    // The three bytes before the current one, nearest first. Kept in memory through
    // volatile accesses: the verifier then knows nothing of them from one byte to the
    // next (single bytes on the stack read back as unknown), so the states of the loop
    // merge instead of multiplying with every byte's value range (235k instructions
    // walked, down to a few thousand).
    let mut history = [0u8; 3];
    let seen = |history: &[u8; 3], at: usize| {
        // SAFETY: reading a local array within its bounds.
        unsafe { core::ptr::read_volatile(history.as_ptr().add(at)) }
    };
    for i in 0..TARGET_WINDOW {
        if i >= len {
            break;
        }
        let Some(&c) = target.get(i) else {
            break;
        };
        let (p1, p2, p3) = (seen(&history, 0), seen(&history, 1), seen(&history, 2));
        let dot_segment_ends =
            (p1 == b'.' && p2 == b'/') || (p1 == b'.' && p2 == b'.' && p3 == b'/');
        if c == b' ' || c == b'?' {
            return dot_segment_ends;
        }
        if c == b'#' {
            return true;
        }
        if c == b'/' && (p1 == b'/' || dot_segment_ends) {
            return true;
        }
        if c == b'%' {
            if i + 2 >= len {
                return true;
            }
            let (Some(&high), Some(&low)) = (target.get(i + 1), target.get(i + 2)) else {
                return true;
            };
            let (Some(high), Some(low)) = (hex(high), hex(low)) else {
                return true;
            };
            let byte = high << 4 | low;
            if byte == b'/' || unreserved(byte) {
                return true;
            }
        }
        // SAFETY: writing a local array within its bounds.
        unsafe {
            let at = history.as_mut_ptr();
            core::ptr::write_volatile(at.add(2), p2);
            core::ptr::write_volatile(at.add(1), p1);
            core::ptr::write_volatile(at, c);
        }
    }
    // The path did not end within what was read.
    true
}

#[inline(always)]
fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 2.3: decoding these never changes what the path means to the server.
#[inline(always)]
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_' || c == b'~'
}
