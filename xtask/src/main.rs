//! `cargo xtask`: set up the machine, build, test and demo Portcullis. Each subcommand is a
//! module with its own options and `run`; every command says what it runs.

mod bench;
mod build;
mod cmd;
mod demo;
mod image;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and tests need (idempotent): nightly rust-src, bpf-linker
    /// built against the nightly's LLVM, and Debian packages.
    Setup(setup::Options),
    /// Build the agent (with its embedded eBPF object) in release mode.
    Build(build::Options),
    /// Run every test: unit, BPF_PROG_TEST_RUN, differential and network-namespace tests.
    Test(test::Options),
    /// Build, then run a self-contained demo in network namespaces.
    Demo(demo::Options),
    /// Measure per-packet cost, flood throughput against iptables and nftables, traffic
    /// under a flood and the control plane; writes target/bench/bench.{md,json}.
    Bench(bench::Options),
    /// Build the container image (static binary, from scratch) into target/image/.
    Image(image::Options),
}

fn main() -> ExitCode {
    // Every command below works on the workspace, wherever `cargo xtask` was started.
    if let Err(e) = std::env::set_current_dir(cmd::workspace_root()) {
        eprintln!("error: entering the workspace: {e}");
        return ExitCode::FAILURE;
    }
    let result = match Cli::parse().command {
        Command::Setup(options) => setup::run(&options),
        Command::Build(options) => build::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Demo(options) => demo::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Image(options) => image::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
