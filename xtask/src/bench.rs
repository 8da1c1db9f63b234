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
    // The flood and control-plane sections run the real agent, built the way users build it.
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "portcullis",
    ]))?;
    let mut command = Command::new("cargo");
    command.env(
        "PORTCULLIS_BIN",
        std::env::current_dir()?.join("target/release/portcullis"),
    );
    command.env("PORTCULLIS_NGINX", setup::nginx_binary());
    command.env("PORTCULLIS_CROWDSEC", setup::crowdsec_root());
    command.env(
        "PORTCULLIS_CROWDSEC_BOUNCER",
        setup::crowdsec_bouncer_root(),
    );
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
