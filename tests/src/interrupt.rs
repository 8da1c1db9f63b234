//! Cleanup when a long run (the benchmarks, the demo) is interrupted. SIGINT and SIGTERM
//! end a process without running its guards' `Drop`, which would leave agents running and
//! the namespaces, veths and pins they made behind. A thread waits for either signal and
//! removes what this process made, found by the tag in their names (`netns`):
//! it stops the process's child processes first (agents, servers, load generators), then
//! deletes its namespaces (their veths, programs and rules go with them) and its agents'
//! pin directories, and exits.

use std::{fs, path::Path};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{agent, netns};

/// Starts the thread that waits for SIGINT and SIGTERM. Call it first in `main`. The
/// signals are caught by a handler (signal-hook's), not blocked: a blocked signal stays
/// blocked in every child process, which would then ignore the SIGTERM that stops it.
pub fn clean_up_on_signal() {
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!(
                "cannot catch SIGINT and SIGTERM ({e}); an interrupted run leaves its namespaces behind"
            );
            return;
        }
    };
    std::thread::spawn(move || {
        let Some(signal) = signals.forever().next() else {
            return;
        };
        eprintln!("signal {signal}: removing this run's agents, namespaces and pins");
        remove_what_this_process_made();
        std::process::exit(130);
    });
}

fn remove_what_this_process_made() {
    for child in children() {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    for ns in netns::remove_all_of_this_process() {
        // An agent started in `ns` left its pins, socket and history.
        drop(agent::Leftovers::of(&ns));
    }
}

/// This process's children, from /proc.
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent(&Path::new("/proc").join(pid.to_string())).as_deref() == Some(&me))
        .collect()
}

/// The parent's pid in `/proc/PID/stat` (the field after the parenthesised name).
fn parent(proc_dir: &Path) -> Option<String> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1).map(str::to_string)
}
