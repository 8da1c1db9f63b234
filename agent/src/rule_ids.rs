//! Rule identity: a stable id per rule name (the index of its configuration and counters in
//! the kernel), and an epoch that changes with the rule's definition, so an unchanged rule
//! keeps its per-source buckets and bans across applies and restarts while a changed one
//! starts fresh. The enforcer owns them and saves them in the state directory after every
//! apply; a restarted agent that takes the pinned maps over reads them back.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::Path,
};

use agent_common::{BLOCK_RULE, EVASION_RULE, RuleConfig, is_named_rule_id};

use crate::{
    policy::{CLI_BLOCK, http::HTTP_EVASION},
    state_file::{self, StateFileError},
};

/// The file in the state directory.
const FILE_NAME: &str = "rule-ids.json";
/// Where agents before `FILE_NAME` kept the ids: the `rule_ids` field of the history.
const LEGACY_FILE_NAME: &str = "history.json";

/// Reading or saving the rule ids failed.
pub type RuleIdsError = StateFileError;

/// Stable rule ids by name, and epochs that change with a rule's definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleIds {
    by_name: HashMap<String, Assigned>,
    next_epoch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Assigned {
    id: u32,
    epoch: u32,
    /// What the rule's buckets and bans depend on, field by field: a mode switch keeps
    /// state, any other change starts fresh.
    #[serde(default)]
    definition: Option<Definition>,
    /// What agents before `definition` saved instead: the kernel configuration's `Debug`
    /// text. Read so that an upgrade keeps the state of unchanged rules; never written.
    #[serde(default, skip_serializing)]
    fingerprint: Option<String>,
}

/// A rule's kernel configuration without its mode and epoch (and without the masks, which
/// follow from the prefixes), saved under these field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Definition {
    interval_ns: u64,
    capacity_ns: u64,
    ban_window_ns: u64,
    ban_for_ns: u64,
    ban_after: u32,
    prefix_v4: u32,
    prefix_v6: u32,
}

impl Definition {
    fn of(config: &RuleConfig) -> Self {
        Self {
            interval_ns: config.interval_ns,
            capacity_ns: config.capacity_ns,
            ban_window_ns: config.ban_window_ns,
            ban_for_ns: config.ban_for_ns,
            ban_after: config.ban_after,
            prefix_v4: config.prefix_v4,
            prefix_v6: config.prefix_v6,
        }
    }
}

/// The `fingerprint` earlier agents saved for `config`: `format!("{:?}")` of the
/// configuration with mode and epoch zeroed, as the `RuleConfig` of those versions printed
/// it. Written out here so that it never changes with the struct.
fn legacy_fingerprint(config: &RuleConfig) -> String {
    let m = config.mask_v6;
    format!(
        "RuleConfig {{ interval_ns: {}, capacity_ns: {}, ban_window_ns: {}, ban_for_ns: {}, \
         ban_after: {}, mode: 0, epoch: 0, prefix_v4: {}, prefix_v6: {}, mask_v4: {}, \
         mask_v6: [{}, {}, {}, {}] }}",
        config.interval_ns,
        config.capacity_ns,
        config.ban_window_ns,
        config.ban_for_ns,
        config.ban_after,
        config.prefix_v4,
        config.prefix_v6,
        config.mask_v4,
        m[0],
        m[1],
        m[2],
        m[3],
    )
}

impl RuleIds {
    /// Assigns ids below `id_count` for exactly the names in `wanted`, keeping the ids of
    /// names seen before (that still fit) and freeing the rest.
    pub(crate) fn assign(&mut self, wanted: &[String], id_count: u32) {
        let wanted_set: HashSet<&str> = wanted.iter().map(String::as_str).collect();
        self.by_name
            .retain(|name, a| wanted_set.contains(name.as_str()) && a.id < id_count);
        let used: HashSet<u32> = self.by_name.values().map(|a| a.id).collect();
        let mut free = (1..id_count).filter(|&id| is_named_rule_id(id) && !used.contains(&id));
        for name in wanted {
            if self.by_name.contains_key(name) {
                continue;
            }
            let id = free
                .next()
                .expect("validation keeps the names within capacity.rules");
            self.by_name.insert(
                name.clone(),
                Assigned {
                    id,
                    epoch: 0,
                    definition: None,
                    fingerprint: None,
                },
            );
        }
    }

    pub(crate) fn id(&self, name: &str) -> u32 {
        self.by_name[name].id
    }

    /// The name of every id assigned, including `portcullis block`'s.
    pub fn names(&self) -> BTreeMap<u32, String> {
        let mut names: BTreeMap<u32, String> = self
            .by_name
            .iter()
            .map(|(name, a)| (a.id, name.clone()))
            .collect();
        names.insert(BLOCK_RULE, CLI_BLOCK.to_string());
        names.insert(EVASION_RULE, HTTP_EVASION.to_string());
        names
    }

    /// The epoch for a rule with this configuration: the old one if the definition is
    /// unchanged, a new one otherwise.
    pub(crate) fn epoch(&mut self, name: &str, config: &RuleConfig) -> u32 {
        let definition = Definition::of(config);
        let assigned = self.by_name.get_mut(name).expect("assigned before");
        let unchanged = match (&assigned.definition, &assigned.fingerprint) {
            (Some(saved), _) => *saved == definition,
            (None, Some(legacy)) => *legacy == legacy_fingerprint(config),
            (None, None) => false,
        };
        if !unchanged {
            self.next_epoch += 1;
            assigned.epoch = self.next_epoch;
        }
        assigned.definition = Some(definition);
        assigned.fingerprint = None;
        assigned.epoch
    }
}
impl RuleIds {
    /// The ids saved in `state_dir`; for a state directory an earlier agent wrote, the copy
    /// in its policy history; none if there is neither.
    pub fn load(state_dir: &Path) -> Result<Self, RuleIdsError> {
        #[derive(serde::Deserialize)]
        struct Legacy {
            #[serde(default)]
            rule_ids: RuleIds,
        }
        if let Some(ids) = state_file::load(&state_dir.join(FILE_NAME), "a set of rule ids")? {
            return Ok(ids);
        }
        let legacy: Option<Legacy> =
            state_file::load(&state_dir.join(LEGACY_FILE_NAME), "a policy history")?;
        Ok(legacy.map(|legacy| legacy.rule_ids).unwrap_or_default())
    }

    /// As `load`, but ids that cannot be read, or are not valid, give way to fresh ones
    /// (every rule starts afresh: its buckets and bans made under old epochs are void),
    /// with an error in the log: a broken state file must not keep the agent from starting.
    pub fn load_or_fresh(state_dir: &Path) -> Self {
        match Self::load(state_dir).map(|ids| ids.validate().map(|()| ids)) {
            Ok(Ok(ids)) => ids,
            Ok(Err(problem)) => {
                tracing::error!(%problem, "the saved rule ids are not valid; every rule starts afresh");
                RuleIds::default()
            }
            Err(e) => {
                tracing::error!(error = %e, "the saved rule ids cannot be read; every rule starts afresh");
                RuleIds::default()
            }
        }
    }

    /// Ids a named rule can have: not 0 nor a reserved id, no two rules sharing one, and
    /// no epoch above the next one to give out. (An id beyond the rule table's size, after
    /// `capacity.rules` shrank, is given anew by `assign`.)
    fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (name, assigned) in &self.by_name {
            if !is_named_rule_id(assigned.id) {
                return Err(format!(
                    "rule '{name}' has id {}, which is not a named rule's",
                    assigned.id
                ));
            }
            if !seen.insert(assigned.id) {
                return Err(format!("id {} is given to two rules", assigned.id));
            }
            if assigned.epoch > self.next_epoch {
                return Err(format!(
                    "rule '{name}' has epoch {}, past the next one to give out ({})",
                    assigned.epoch, self.next_epoch
                ));
            }
        }
        Ok(())
    }

    /// Saves the ids in `state_dir`.
    pub fn save(&self, state_dir: &Path) -> Result<(), RuleIdsError> {
        state_file::save(&state_dir.join(FILE_NAME), self)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{policy, tables};

    fn tables(yaml: &str, ids: &mut RuleIds) -> tables::Tables {
        tables::build(&policy::parse(Path::new("t.yaml"), yaml).unwrap(), ids, 2)
    }

    /// history.json as agents before the field-by-field definition wrote it: the rule's
    /// identity was the configuration's Debug text.
    const LEGACY_RULE_IDS: &str = r#"{"by_name":{"a":{"id":1,"epoch":7,"fingerprint":"RuleConfig { interval_ns: 1000000000, capacity_ns: 5000000000, ban_window_ns: 0, ban_for_ns: 0, ban_after: 0, mode: 0, epoch: 0, prefix_v4: 32, prefix_v6: 64, mask_v4: 4294967295, mask_v6: [4294967295, 4294967295, 0, 0] }"}},"next_epoch":7}"#;

    #[test]
    fn rule_identity_from_an_earlier_history_file_is_kept() {
        let rule = |burst: u32| {
            format!("rate_limits:\n  - {{name: a, protocol: udp, rate: 1/s, burst: {burst}}}\n")
        };
        let mut ids: RuleIds = serde_json::from_str(LEGACY_RULE_IDS).unwrap();
        let same = tables(&rule(5), &mut ids);
        assert_eq!(same.rules[&1].epoch, 7, "an unchanged rule keeps its state");
        let saved = serde_json::to_string(&ids).unwrap();
        assert!(
            saved.contains(r#""definition":{"interval_ns":1000000000,"capacity_ns":5000000000"#)
                && !saved.contains("fingerprint"),
            "{saved}"
        );
        // Read back, the new form still knows the rule.
        let mut reread: RuleIds = serde_json::from_str(&saved).unwrap();
        assert_eq!(tables(&rule(5), &mut reread).rules[&1].epoch, 7);

        let mut ids: RuleIds = serde_json::from_str(LEGACY_RULE_IDS).unwrap();
        let changed = tables(&rule(6), &mut ids);
        assert_eq!(changed.rules[&1].epoch, 8, "a changed rule starts fresh");
    }

    #[test]
    fn ids_are_saved_and_read_back_and_read_from_an_earlier_history() {
        let dir = tempfile_dir("ids");
        assert_eq!(RuleIds::load(&dir).unwrap(), RuleIds::default());
        // An earlier agent's state directory: the ids inside history.json.
        std::fs::write(
            dir.join(LEGACY_FILE_NAME),
            format!(r#"{{"versions":[],"rule_ids":{LEGACY_RULE_IDS}}}"#),
        )
        .unwrap();
        let legacy = RuleIds::load(&dir).unwrap();
        assert_eq!(legacy.id("a"), 1);
        let mut ids = legacy.clone();
        tables(
            "rate_limits:\n  - {name: a, protocol: udp, rate: 1/s, burst: 5}\n",
            &mut ids,
        );
        ids.save(&dir).unwrap();
        assert_eq!(
            RuleIds::load(&dir).unwrap(),
            ids,
            "its own file wins once written"
        );
        std::fs::write(dir.join(FILE_NAME), "{").unwrap();
        assert!(matches!(
            RuleIds::load(&dir),
            Err(RuleIdsError::Parse { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_saved_ids_give_way_to_fresh_ones() {
        let dir = tempfile_dir("invalid");
        for (bad, why) in [
            (
                r#"{"by_name":{"a":{"id":0,"epoch":1}},"next_epoch":1}"#,
                "id 0 disables a rule",
            ),
            (
                r#"{"by_name":{"a":{"id":1023,"epoch":1}},"next_epoch":1}"#,
                "the block rule's id",
            ),
            (
                r#"{"by_name":{"a":{"id":1022,"epoch":1}},"next_epoch":1}"#,
                "http-evasion's id",
            ),
            (
                r#"{"by_name":{"a":{"id":3,"epoch":1},"b":{"id":3,"epoch":1}},"next_epoch":1}"#,
                "one id for two rules",
            ),
            (
                r#"{"by_name":{"a":{"id":3,"epoch":9}},"next_epoch":1}"#,
                "an epoch from the future",
            ),
            ("{", "not JSON"),
        ] {
            std::fs::write(dir.join(FILE_NAME), bad).unwrap();
            assert_eq!(RuleIds::load_or_fresh(&dir), RuleIds::default(), "{why}");
        }
        std::fs::write(
            dir.join(FILE_NAME),
            r#"{"by_name":{"a":{"id":3,"epoch":1}},"next_epoch":1}"#,
        )
        .unwrap();
        assert_eq!(
            RuleIds::load_or_fresh(&dir).id("a"),
            3,
            "a valid file is kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_fill_the_rule_table_around_the_reserved_ids() {
        let names: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
        let count = agent_common::rule_id_count(10_000);
        let mut ids = RuleIds::default();
        ids.assign(&names, count);
        let given: BTreeSet<u32> = names.iter().map(|n| ids.id(n)).collect();
        assert_eq!(given.len(), 10_000, "one id each");
        assert!(given.iter().all(|&id| is_named_rule_id(id) && id < count));
        // The table shrinks (capacity.rules lowered, the agent restarted): a rule whose id
        // no longer fits gets one that does, the others keep theirs.
        let kept = ids.id("r5");
        let few = vec!["r5".to_string(), "r9999".to_string()];
        ids.assign(&few, 1024);
        assert_eq!(ids.id("r5"), kept);
        assert!(is_named_rule_id(ids.id("r9999")) && ids.id("r9999") < 1024);
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pc-rule-ids-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
