use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds `portcullis-test-ebpf` (the floor, ceiling and flood generators) for the BPF
/// target into OUT_DIR, where `src/test_programs.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", root_dir.display()))?;
    let package = Package {
        name: "portcullis-test-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context("building portcullis-test-ebpf")
}
