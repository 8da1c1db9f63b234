//! Cleanup when a long run (the benchmarks, the demo) is interrupted. SIGINT and SIGTERM
//! end a process without running its guards' `Drop`, which would leave agents running and
//! the namespaces, veths and pins they made behind. A thread waits for either signal and
//! removes what this process made, found by the tag in its names (`netns::unique_tag`):
//! it stops the process's child processes first (agents, servers, load generators), then
//! deletes its namespaces (their veths, programs and rules go with them) and its agents'
//! pin directories, and exits.

use std::{fs, path::Path, process::Command};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::netns;

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
    let tag = netns::process_tag();
    for child in children() {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        let list = String::from_utf8_lossy(&out.stdout);
        for ns in list
            .lines()
            .filter_map(|line| line.split_whitespace().next())
        {
            if netns::made_by(ns, &tag) {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    // Agents' pin directories, and their sockets and state directories (`agent`).
    for dir in [Path::new("/sys/fs/bpf"), &std::env::temp_dir()] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("pc-test-") else {
                continue;
            };
            let ns = rest.trim_end_matches(".sock").trim_end_matches("-state");
            if netns::made_by(ns, &tag) {
                let path = entry.path();
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
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
