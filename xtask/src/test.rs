//! `cargo xtask test`: formatting, lints, and every test, in tiers: `unit` (no privileges),
//! `kernel` (BPF_PROG_TEST_RUN and network namespaces, as root) and `kubernetes` (the image
//! and the manifests). All tiers run by default, and CI runs them all; `--tier` picks some
//! for a quick local run. Kernel tests need root; here they are required, so a machine that
//! cannot run them fails instead of skipping.
//!
//! Every step and every test file runs even when an earlier one failed, so that one failure
//! never hides another; the run ends with the list of what failed.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, image, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Run only this tier (repeat for several); default: every tier.
    #[arg(long = "tier", value_enum)]
    pub tiers: Vec<Tier>,
    /// Extra arguments for the test harness, e.g. a test name filter.
    #[arg(last = true)]
    pub harness_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// Unit tests of every crate: parsers, policy, tables, codes. No privileges needed.
    Unit,
    /// The real programs on crafted frames and the agent on real traffic (root).
    Kernel,
    /// The container image and the Kubernetes manifests, run by podman (root).
    Kubernetes,
}

/// The integration tests (`tests/tests/*.rs`) by tier. A unit test below checks that every
/// file there is listed, so none is left out of a run.
const KERNEL_TESTS: &[&str] = &["verdicts", "object", "differential", "cli"];
/// Kernel tests that assert rates or timing windows while other tests of the same file
/// flood: their tests run one at a time.
const KERNEL_TESTS_SERIAL: &[&str] = &[
    "http",
    "crowdsec",
    "lists",
    "flood",
    "buckets",
    "netns",
    "restart",
    "control",
    "metrics",
    "configmap",
    "demo",
    "bench_smoke",
];
const KUBERNETES_TESTS: &[&str] = &["image", "kubernetes"];

/// Packages of the host build; the eBPF crates are built for their own target.
const EBPF_PACKAGES: &[&str] = &["agent-ebpf", "portcullis-test-ebpf"];

pub fn run(options: &Options) -> Result<()> {
    let tiers = if options.tiers.is_empty() {
        vec![Tier::Unit, Tier::Kernel, Tier::Kubernetes]
    } else {
        options.tiers.clone()
    };
    let needs_root = tiers.iter().any(|tier| *tier != Tier::Unit);
    if needs_root && !cmd::is_root() {
        bail!(
            "the kernel and kubernetes tiers need root (BPF, XDP, network namespaces); run \
             `cargo xtask test` as root, or `cargo xtask test --tier unit`"
        );
    }
    setup::run(&setup::Options {})?;
    let mut failures = Failures::default();
    failures.step("lints", lint());
    for tier in tiers {
        match tier {
            Tier::Unit => failures.step("unit tests", unit(options)),
            Tier::Kernel => kernel(options, &mut failures),
            Tier::Kubernetes => kubernetes(options, &mut failures),
        }
    }
    failures.into_result()
}

/// What failed so far in a run that goes on after a failure.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    /// Notes `result` of the step `name`, printing its error now so that it sits next to the
    /// step's output.
    fn step(&mut self, name: &str, result: Result<()>) {
        if let Err(e) = result {
            eprintln!("error: {name}: {e:#}");
            self.0.push(format!("{name}: {e:#}"));
        }
    }

    /// Ok if nothing failed; else an error listing every failure.
    fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        eprintln!("\n{} step(s) failed:", self.0.len());
        for failure in &self.0 {
            eprintln!("  - {failure}");
        }
        bail!("{} step(s) failed: {}", self.0.len(), self.0.join("; "))
    }
}

/// `cargo COMMAND --workspace` without the eBPF crates.
fn host_workspace(command: &str) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.args([command, "--workspace"]);
    for package in EBPF_PACKAGES {
        cargo.args(["--exclude", package]);
    }
    cargo
}

/// rustfmt, clippy on the host crates, and clippy on the eBPF crates for the BPF target
/// (what the kernel runs is linted as strictly as the rest).
fn lint() -> Result<()> {
    cmd::run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    cmd::run(host_workspace("clippy").args(["--all-targets", "--", "--deny", "warnings"]))?;
    let mut ebpf = Command::new("cargo");
    ebpf.args([
        "+nightly",
        "clippy",
        "--release",
        "--target",
        "bpfel-unknown-none",
    ])
    .args(["-Z", "build-std=core"]);
    for package in EBPF_PACKAGES {
        ebpf.args(["--package", package]);
    }
    cmd::run(ebpf.args(["--", "--deny", "warnings"]))
}

fn unit(options: &Options) -> Result<()> {
    cmd::run(
        host_workspace("test")
            .args(["--lib", "--bins", "--"])
            .args(&options.harness_args),
    )
}

/// Runs the integration test file `name`, one test at a time if `serial`.
fn integration(name: &str, serial: bool, options: &Options, env: &[(&str, String)]) -> Result<()> {
    let mut cargo = Command::new("cargo");
    cargo.args([
        "test",
        "--package",
        "portcullis-tests",
        "--test",
        name,
        "--",
    ]);
    if serial {
        cargo.arg("--test-threads=1");
    }
    cargo
        .args(&options.harness_args)
        .env("PORTCULLIS_REQUIRE_KERNEL_TESTS", "1")
        .envs(env.iter().map(|(key, value)| (key, value)));
    cmd::run(&mut cargo)
}

/// Runs each of the test files `names` of `tier`, whatever happened to the ones before.
fn integration_files(
    tier: &str,
    names: &[&str],
    serial: bool,
    options: &Options,
    env: &[(&str, String)],
    failures: &mut Failures,
) {
    for name in names {
        failures.step(
            &format!("{tier} tests/{name}.rs"),
            integration(name, serial, options, env),
        );
    }
}

/// The agent binary the namespace and CLI tests run: `cargo test` alone does not build it,
/// because the agent package has no integration tests of its own.
fn agent_binary() -> Result<(&'static str, String)> {
    cmd::run(Command::new("cargo").args(["build", "--package", "portcullis"]))?;
    let binary = cmd::workspace_root().join("target/debug/portcullis");
    Ok(("PORTCULLIS_BIN", binary.display().to_string()))
}

fn kernel(options: &Options, failures: &mut Failures) {
    let env = match kernel_env() {
        Ok(env) => env,
        Err(e) => return failures.step("kernel tests", Err(e)),
    };
    // Built once here, so that the test files do not each wait on the first one's build.
    failures.step(
        "building the kernel tests",
        build_tests(&[KERNEL_TESTS, KERNEL_TESTS_SERIAL].concat()),
    );
    integration_files("kernel", KERNEL_TESTS, false, options, &env, failures);
    integration_files("kernel", KERNEL_TESTS_SERIAL, true, options, &env, failures);
}

fn kernel_env() -> Result<[(&'static str, String); 4]> {
    Ok([
        agent_binary()?,
        // Debian's nginx, for the benchmark's smoke run and as the list server.
        (
            "PORTCULLIS_NGINX",
            setup::nginx_binary().display().to_string(),
        ),
        // Debian's crowdsec, for its Local API, and its firewall bouncer (the benchmark).
        (
            "PORTCULLIS_CROWDSEC",
            setup::crowdsec_root().display().to_string(),
        ),
        (
            "PORTCULLIS_CROWDSEC_BOUNCER",
            setup::crowdsec_bouncer_root().display().to_string(),
        ),
    ])
}

/// Builds the test binaries of the integration tests crate without running them.
fn build_tests(names: &[&str]) -> Result<()> {
    let mut cargo = Command::new("cargo");
    cargo.args(["test", "--package", "portcullis-tests", "--no-run"]);
    for name in names {
        cargo.args(["--test", name]);
    }
    cmd::run(&mut cargo)
}

fn kubernetes(options: &Options, failures: &mut Failures) {
    match kubernetes_env() {
        Ok(env) => integration_files(
            "kubernetes",
            KUBERNETES_TESTS,
            false,
            options,
            &env,
            failures,
        ),
        Err(e) => failures.step("kubernetes tests", Err(e)),
    }
}

fn kubernetes_env() -> Result<[(&'static str, String); 3]> {
    Ok([
        agent_binary()?,
        // The image tests take the image `cargo xtask image` builds.
        ("PORTCULLIS_IMAGE", image::build()?.display().to_string()),
        // kubectl, kubernetes-validate and checkov for the manifest tests.
        (
            "PORTCULLIS_TOOLS",
            setup::kubernetes_tools_venv()
                .join("bin")
                .display()
                .to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_integration_test_is_in_a_tier() {
        let dir = cmd::workspace_root().join("tests/tests");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
            .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut listed: Vec<String> = [KERNEL_TESTS, KERNEL_TESTS_SERIAL, KUBERNETES_TESTS]
            .concat()
            .iter()
            .map(|name| name.to_string())
            .collect();
        listed.sort();
        assert_eq!(
            files, listed,
            "tests/tests files vs the tiers in xtask/src/test.rs"
        );
    }
}
