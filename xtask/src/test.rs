//! `cargo xtask test`: formatting, lints, and every test. Kernel tests need root; here
//! they are required, so a machine that cannot run them fails instead of skipping.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, image, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Extra arguments for the test harness, e.g. a test name filter.
    #[arg(last = true)]
    pub harness_args: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the kernel tests need root (BPF, XDP, network namespaces); run `cargo xtask test` as root"
        );
    }
    setup::run(&setup::Options {})?;
    cmd::run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    cmd::run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "--deny",
        "warnings",
    ]))?;
    // The namespace and CLI tests run the real binary; `cargo test` alone does not build
    // it, because the agent package has no integration tests of its own.
    cmd::run(Command::new("cargo").args(["build", "--package", "portcullis"]))?;
    let binary = cmd::workspace_root().join("target/debug/portcullis");
    // The image tests take the image `cargo xtask image` builds.
    let image = image::build()?;
    cmd::run(
        Command::new("cargo")
            .args(["test", "--workspace", "--exclude", "agent-ebpf", "--"])
            .args(&options.harness_args)
            .env("PORTCULLIS_BIN", binary)
            .env("PORTCULLIS_IMAGE", image)
            // kubectl, kubernetes-validate and checkov for the manifest tests.
            .env(
                "PORTCULLIS_TOOLS",
                setup::kubernetes_tools_venv().join("bin"),
            )
            .env("PORTCULLIS_REQUIRE_KERNEL_TESTS", "1"),
    )
}
