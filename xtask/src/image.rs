//! `cargo xtask image`: a static (musl) `portcullis` and an OCI image from scratch holding
//! only it, built by buildah from the repository's Containerfile (no Docker daemon), and
//! saved as an OCI archive that podman, skopeo or a registry push can take.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

#[derive(clap::Args)]
pub struct Options {}

/// The image's version: the `portcullis` package's, as cargo resolves it.
pub fn version() -> Result<String> {
    let metadata =
        cmd::output(Command::new("cargo").args(["metadata", "--format-version", "1", "--no-deps"]))
            .context("`cargo metadata` failed")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("reading `cargo metadata`")?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "portcullis")
        .and_then(|package| package["version"].as_str())
        .map(str::to_string)
        .context("`cargo metadata` lists no portcullis package")
}

/// Where `cargo xtask image` writes the archive.
pub fn archive_path(version: &str) -> PathBuf {
    cmd::workspace_root().join(format!("target/image/portcullis-{version}.oci.tar"))
}

pub fn run(_options: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("buildah builds images as root here; run `cargo xtask image` as root");
    }
    setup::run(&setup::Options {})?;
    let archive = build()?;
    eprintln!("image: {}", archive.display());
    Ok(())
}

/// Builds the static binary and the image; returns the archive's path.
pub fn build() -> Result<PathBuf> {
    let version = version()?;
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--quiet",
        "--target",
        MUSL_TARGET,
        "--package",
        "portcullis",
    ]))?;
    let binary = cmd::workspace_root().join(format!("target/{MUSL_TARGET}/release/portcullis"));
    check_static(&binary)?;

    // The build context holds the binary only: nothing else can end up in the image.
    let context = cmd::workspace_root().join("target/image/context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&binary, context.join("portcullis"))
        .with_context(|| format!("copying {}", binary.display()))?;
    let tag = format!("localhost/portcullis:{version}");
    cmd::run(
        Command::new("buildah")
            .args(["build", "--quiet", "--file"])
            .arg(cmd::workspace_root().join("Containerfile"))
            .args(["--build-arg", &format!("VERSION={version}"), "--tag", &tag])
            .arg(&context),
    )?;
    let archive = archive_path(&version);
    let _ = std::fs::remove_file(&archive);
    cmd::run(Command::new("buildah").args([
        "push",
        "--quiet",
        &tag,
        &format!("oci-archive:{}:{tag}", archive.display()),
    ]))?;
    Ok(archive)
}

/// A binary for an image from scratch must not need a dynamic loader or libraries.
fn check_static(binary: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("statically linked") || text.contains("not a dynamic executable") {
        Ok(())
    } else {
        bail!("{} is not static:\n{text}", binary.display())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_the_agent_packages() {
        // xtask and the agent share the workspace's version.
        assert_eq!(super::version().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
