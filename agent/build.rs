use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds `agent-ebpf` for the BPF target (release, nightly, build-std) into OUT_DIR, where
/// `loader.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let root_dir = ebpf_crate_dir()?;
    let package = Package {
        name: "agent-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context("building agent-ebpf")
}

fn ebpf_crate_dir() -> anyhow::Result<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent has no parent directory"))?
        .join("agent-ebpf");
    Ok(root.to_string_lossy().into_owned())
}
