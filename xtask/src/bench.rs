//! `cargo xtask bench`: builds in release and runs the benchmark program from the tests
//! crate, which writes `target/bench/bench.md` and `target/bench/bench.json`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct Options {
    /// A run of a few seconds, to check that the benchmarks work (the numbers mean little).
    #[arg(long)]
    pub smoke: bool,
}

pub fn run(options: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmarks load BPF programs and need root");
    }
    setup::run(&setup::Options {})?;
    let mut command = Command::new("cargo");
    command.args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "portcullis-tests",
        "--bin",
        "bench",
        "--",
    ]);
    command.args(["--out", "target/bench"]);
    if options.smoke {
        command.arg("--smoke");
    }
    cmd::run(&mut command)
}
