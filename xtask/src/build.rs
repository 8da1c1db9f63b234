//! `cargo xtask build`: the release binary, with the eBPF object built and embedded by
//! `agent/build.rs`.

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<()> {
    setup::run(&setup::Options {})?;
    cmd::run(Command::new("cargo").args(["build", "--release", "--package", "portcullis"]))?;
    eprintln!("built target/release/portcullis");
    Ok(())
}
