//! The kernel programs live in the `portcullis` binary target (`src/main.rs`); this empty
//! library exists so the agent can name this crate as a build dependency, which makes cargo
//! rebuild the agent when the kernel code changes.
#![no_std]
