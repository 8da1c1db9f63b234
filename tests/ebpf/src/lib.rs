//! The programs live in the `portcullis-test` binary target (`src/main.rs`); this empty
//! library exists so the tests crate can name this crate as a build dependency, which makes
//! cargo rebuild the tests when these programs change.
#![no_std]
