use which::which;

/// Rebuild the eBPF object when bpf-linker changes: the object's bytes depend on it, but
/// cargo cannot see that dependency on its own.
fn main() {
    // Global functions (see judge.rs and frame.rs): kept global for the verifier to check on their own.
    println!(
        "cargo:rustc-link-arg-bins=--export=portcullis_judge_xdp_0,portcullis_judge_xdp_1,portcullis_judge_tc_0,portcullis_judge_tc_1,portcullis_reset_xdp,portcullis_reset_tc,portcullis_evasive_target"
    );
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
