//! Enforce or shadow: how a rule, deny entry or ban acts on what it matches. One type from
//! the policy file (`mode: shadow`) and the CLI (`portcullis mode NAME shadow`) down to the
//! code the kernel reads in `RuleConfig::mode`, `AclEntry::mode` and events.

/// Codes are stable: they live in pinned maps that a newer agent takes over. Never
/// renumber; a retired code stays reserved (see `Mode::RETIRED`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Mode {
    /// Drop what matches (the default).
    #[default]
    Enforce = 0,
    /// Only count and report what would have been dropped; the packet goes on.
    Shadow = 1,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Enforce, Mode::Shadow];
    /// Codes once used and retired: never given to a new mode.
    pub const RETIRED: [u32; 0] = [];

    /// The code the kernel compares against.
    pub const fn code(self) -> u32 {
        self as u32
    }

    pub const fn from_code(code: u32) -> Option<Mode> {
        match code {
            0 => Some(Mode::Enforce),
            1 => Some(Mode::Shadow),
            _ => None,
        }
    }

    /// The name in policy files, on the command line, in events and in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }

    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|mode| mode.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These codes are in pinned maps: changing one breaks take-over by a newer agent.
    #[test]
    fn codes_and_names_are_stable() {
        let pinned = [(0, "enforce"), (1, "shadow")];
        assert_eq!(Mode::ALL.len(), pinned.len());
        for (mode, (code, name)) in Mode::ALL.into_iter().zip(pinned) {
            assert_eq!((mode.code(), mode.name()), (code, name));
            assert_eq!(Mode::from_code(code), Some(mode));
            assert_eq!(Mode::from_name(name), Some(mode));
            assert!(!Mode::RETIRED.contains(&code), "{code} is retired");
        }
        assert_eq!(Mode::from_code(2), None);
        assert_eq!(
            crate::ACL_ALLOW,
            2,
            "ACL_ALLOW shares AclEntry::mode and must not be a mode code"
        );
    }
}
