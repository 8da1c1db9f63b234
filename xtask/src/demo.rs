//! `cargo xtask demo`: builds, then runs the demo program from the tests crate, which sets
//! up its own namespaces, runs the agent on `examples/demo-policy.yaml`, drives traffic and
//! prints what happened.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("the demo attaches XDP programs in network namespaces and needs root");
    }
    setup::run(&setup::Options {})?;
    cmd::run(Command::new("cargo").args(["build", "--package", "portcullis"]))?;
    cmd::run(Command::new("cargo").args([
        "run",
        "--quiet",
        "--package",
        "portcullis-tests",
        "--bin",
        "demo",
    ]))
}
