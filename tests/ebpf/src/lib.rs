//! The programs live in the `portcullis-test` binary target (`src/main.rs`). This library
//! holds what they share with the tests crate, which also names this crate as a build
//! dependency so that cargo rebuilds the tests when these programs change.
#![no_std]

/// Frames the flood generator's fan-out makes of each frame the generator's socket sends:
/// enough that the socket's own cost per frame (an skb, a system call) is spread thin.
pub const FANOUT_COPIES: u32 = 32;
