//! The README's first command must keep working: the demo runs to the end, checks its own
//! results (it exits non-zero when they are off) and prints its table.

use portcullis_tests::{output_text, require_kernel};

#[test]
fn the_demo_runs_and_sees_what_it_expects() {
    require_kernel!();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", output_text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    for row in [
        "(legitimate)",
        "(deny list)",
        "(allow list)",
        "(flooder)",
        "(guesser)",
        "Kernel counters",
        "Done:",
    ] {
        assert!(
            stdout.contains(row),
            "the demo's output lacks {row:?}:\n{stdout}"
        );
    }
}
