//! Watches the policy file. The directory is watched rather than the file, so edits in
//! place, editors that write a new file and rename it over the old one, and Kubernetes'
//! `..data` symlink swaps are all seen. The caller re-reads the file and compares contents.

use std::path::Path;

use anyhow::{Context as _, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Whether an event may mean a file changed. Opening and reading a file are events too
/// (inotify's OPEN and CLOSE_NOWRITE): taken as changes, the agent's own read after each
/// change would be one, and it would read the file again every time, for ever.
pub fn is_change(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
}

/// Starts watching; every change in the file's directory sends `()` on the returned
/// channel. Keep the watcher alive as long as you want notifications.
pub fn watch(policy: &Path) -> Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let dir = policy
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, rx) = mpsc::channel(16);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| is_change(&e)) {
            // A full channel already holds a pending notification; that is enough.
            let _ = tx.try_send(());
        }
    })
    .context("creating the policy file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok((watcher, rx))
}
