//! Test support for Portcullis: loading the real programs for BPF_PROG_TEST_RUN, building
//! frames, a userspace reference model of the decision, and network-namespace fixtures that
//! clean up after themselves.

pub mod agent;
pub mod cgroup;
pub mod configmap;
pub mod crowdsec;
pub mod flood;
pub mod frames;
pub mod harness;
pub mod interrupt;
pub mod kernel;
pub mod kubernetes;
pub mod model;
pub mod netns;
pub mod nginx;
pub mod podman;
pub mod test_programs;
pub mod traffic;

/// A finished command's output as one text, stdout then stderr, for assertion messages
/// and for looking for what a program said on either.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `text` to `path` the way editors and the kubelet do: a new file, renamed over
/// the old one.
pub fn replace_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let new = path.with_extension("new");
    std::fs::write(&new, text)?;
    std::fs::rename(&new, path)
}
