//! Whether kernel tests can run here, and what to do when they cannot.

/// Set by `cargo xtask test`: kernel tests must run, so a missing privilege is a failure.
pub const REQUIRE_ENV: &str = "PORTCULLIS_REQUIRE_KERNEL_TESTS";

/// True if this process may load BPF programs and create namespaces. When it may not, the
/// test is skipped with a message saying why, unless `REQUIRE_ENV` is set, in which case it
/// panics.
pub fn available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{test}: kernel tests are required ({REQUIRE_ENV} is set) but this is not root");
    }
    eprintln!("SKIPPED {test}: needs root for BPF and network namespaces");
    false
}

/// Skips the calling test (returns early) when kernel tests cannot run.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if !$crate::kernel::available(module_path!()) {
            return;
        }
    };
}

/// A path `cargo xtask test` passes in environment variable `var` (the image archive, the
/// Kubernetes tools). Outside it the test is skipped with a message; under `REQUIRE_ENV`
/// a missing variable is a failure.
pub fn from_xtask(var: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(var) {
        Some(path) => Some(path.into()),
        None if std::env::var_os(REQUIRE_ENV).is_some() => {
            panic!("{var} is not set; `cargo xtask test` sets it")
        }
        None => {
            eprintln!("SKIPPED: {var} is not set (`cargo xtask test` sets it)");
            None
        }
    }
}
