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
    /// Loads the history saved in `state_dir`, or starts an empty one there.
    pub fn load(state_dir: &Path) -> Result<Self, HistoryError> {
        let path = state_dir.join(FILE_NAME);
        let mut history: History = state_file::load(&path, "a policy history")?.unwrap_or_default();
        history.path = Some(path);
        Ok(history)
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

    /// Records a newly applied version and saves the history. Returns its number.
    pub fn record(
        &mut self,
        origin: String,
        text: String,
        modes: BTreeMap<String, Mode>,
    ) -> Result<u64, HistoryError> {
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
        self.save()?;
        Ok(number)
    }

    fn save(&self) -> Result<(), HistoryError> {
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
        let mut history = History::load(&dir).unwrap();
        assert!(history.current().is_none());
        for i in 0..(KEPT_VERSIONS + 3) {
            let n = history
                .record(format!("test {i}"), format!("# {i}\n"), BTreeMap::new())
                .unwrap();
            assert_eq!(n, i as u64 + 1);
        }
        let reloaded = History::load(&dir).unwrap();
        assert_eq!(reloaded.versions().len(), KEPT_VERSIONS);
        assert_eq!(reloaded.current().unwrap().number, KEPT_VERSIONS as u64 + 3);
        assert_eq!(reloaded.versions()[0].number, 4);
        assert!(reloaded.get(3).is_none());
        assert_eq!(reloaded.get(5).unwrap().text, "# 4\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_history_is_an_error_not_an_empty_history() {
        let dir = std::env::temp_dir().join(format!("pc-history-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), "{not json").unwrap();
        assert!(matches!(
            History::load(&dir),
            Err(HistoryError::Parse { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
