//! Applied policy versions: the last few are kept, with when and by what they were applied,
//! so `policy rollback` works, also after a restart (they are saved in the state directory).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    policy::Mode,
    state_file::{self, StateFileError},
};

/// Versions kept for rollback.
pub const KEPT_VERSIONS: usize = 10;
const FILE_NAME: &str = "history.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    /// What applied it: "file /etc/portcullis/policy.yaml", "cli (uid 0)", "rollback to 3"...
    pub origin: String,
    /// The policy file text.
    pub text: String,
    /// Run-time mode switches (`portcullis mode`) on top of the text, by rule or deny name.
    #[serde(default)]
    pub modes: BTreeMap<String, Mode>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Oldest first; the last one is in force. (Earlier agents also kept the rule ids
    /// here; the enforcer keeps them in a file of its own now, see `rule_ids`.)
    versions: Vec<Version>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

/// Reading or saving the history failed.
pub type HistoryError = StateFileError;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl History {
    /// Loads the history saved in `state_dir`, or starts an empty one there. A history that
    /// cannot be used is no reason to leave a node unprotected: a corrupt one is moved
    /// aside (to `history.json.corrupt-<unix seconds>`, kept for a post-mortem), an
    /// unreadable one is left where it is, and either way the agent starts with an empty
    /// history and says so.
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE_NAME);
        let history = match state_file::load::<History>(&path, "a policy history") {
            Ok(history) => history.unwrap_or_default(),
            Err(e @ StateFileError::Parse { .. }) => {
                let aside = path.with_extension(format!("json.corrupt-{}", now_secs()));
                match std::fs::rename(&path, &aside) {
                    Ok(()) => tracing::error!(
                        error = %e,
                        moved_to = %aside.display(),
                        "the policy history is corrupt: moved aside, starting with an empty history"
                    ),
                    Err(move_error) => tracing::error!(
                        error = %e,
                        %move_error,
                        "the policy history is corrupt and could not be moved aside; starting with an empty history"
                    ),
                }
                History::default()
            }
            Err(e) => {
                tracing::error!(error = %e, "the policy history cannot be read; starting with an empty history");
                History::default()
            }
        };
        History {
            path: Some(path),
            ..history
        }
    }

    pub fn current(&self) -> Option<&Version> {
        self.versions.last()
    }

    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    pub fn get(&self, number: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// Records a newly applied version. Returns its number. `save` writes it to disk.
    pub fn record(&mut self, origin: String, text: String, modes: BTreeMap<String, Mode>) -> u64 {
        let number = self.current().map_or(1, |v| v.number + 1);
        self.versions.push(Version {
            number,
            applied_at: now_secs(),
            origin,
            text,
            modes,
        });
        if self.versions.len() > KEPT_VERSIONS {
            self.versions.remove(0);
        }
        number
    }

    /// Writes the history to the state directory.
    pub fn save(&self) -> Result<(), HistoryError> {
        match &self.path {
            Some(path) => state_file::save(path, self),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_versions_and_survives_a_reload() {
        let dir = std::env::temp_dir().join(format!("pc-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut history = History::load(&dir);
        assert!(history.current().is_none());
        for i in 0..(KEPT_VERSIONS + 3) {
            let n = history.record(format!("test {i}"), format!("# {i}\n"), BTreeMap::new());
            history.save().unwrap();
            assert_eq!(n, i as u64 + 1);
        }
        let reloaded = History::load(&dir);
        assert_eq!(reloaded.versions().len(), KEPT_VERSIONS);
        assert_eq!(reloaded.current().unwrap().number, KEPT_VERSIONS as u64 + 3);
        assert_eq!(reloaded.versions()[0].number, 4);
        assert!(reloaded.get(3).is_none());
        assert_eq!(reloaded.get(5).unwrap().text, "# 4\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_history_is_moved_aside_and_the_agent_starts_empty() {
        let dir = std::env::temp_dir().join(format!("pc-history-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), "{not json").unwrap();
        let history = History::load(&dir);
        assert!(history.current().is_none());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("history.json.corrupt-"), "{names:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join(&names[0])).unwrap(),
            "{not json",
            "kept for a post-mortem"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
