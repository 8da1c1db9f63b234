use which::which;

/// Rebuild the eBPF object when bpf-linker changes: the object's bytes depend on it, but
/// cargo cannot see that dependency on its own.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
