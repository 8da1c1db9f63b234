//! IP lists: allow and deny entries that name a file or an http(s) URL instead of a CIDR.
//! `format` reads a list's text, `cache` keeps the last good copy of each URL in the state
//! directory, `follow` watches files and refreshes URLs, and `expand` merges the copies
//! into the policy the enforcer writes. A list never blocks a policy: one that cannot be
//! read yet applies as empty, and one that fails later keeps its last good copy; both are
//! reported (log, `status`, metrics).

mod cache;
mod follow;
pub mod format;
mod memory;

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::Arc,
};

use ipnet::IpNet;

pub use follow::{Outcome, Update, follow};
pub use format::ListCopy;

use crate::{
    control::protocol::ListStatus,
    policy::{DenyRule, ListAction, ListRule, ListSource, Policy},
};

/// What is known of each list: its copy in force, and how its last read went.
#[derive(Debug, Default, Clone)]
pub struct Copies {
    lists: BTreeMap<ListSource, ListState>,
}

#[derive(Debug, Default, Clone)]
struct ListState {
    /// The last good copy; `None` until one was read.
    copy: Option<Arc<ListCopy>>,
    /// When that copy was read (Unix seconds), and whether it came from the cache.
    read_unix: Option<u64>,
    from_cache: bool,
    /// The last read or fetch that succeeded, unchanged copies included.
    checked_unix: Option<u64>,
    /// Why the last read or fetch failed, and since when reads fail.
    error: Option<String>,
    failing_since_unix: Option<u64>,
}

/// How one list went into the policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InForce {
    pub entries: usize,
    /// Entries another entry already holds (the policy's own, or an earlier list's).
    pub duplicates: usize,
    /// Deny entries inside an allow entry: allow is checked first, so they cannot apply.
    pub covered_by_allow: usize,
    /// Why the list's copy is not applied at all.
    pub not_applied: Option<String>,
}

impl Copies {
    /// Reads what can be read at once for `policy`: files, and the cached copies of URLs
    /// (so a restart enforces a URL's entries before its first fetch).
    pub fn read_local(&mut self, policy: &Policy, state_dir: &Path) {
        for rule in &policy.lists {
            if self
                .lists
                .get(&rule.source)
                .is_some_and(|s| s.copy.is_some())
            {
                continue;
            }
            let bound = memory::entry_bound(rule.capacity_cidrs);
            let update = match &rule.source {
                ListSource::File(path) => follow::read_file(path, bound),
                ListSource::Url(url) => match cache::read(state_dir, url, bound) {
                    Some((meta, copy)) => Update::cached(url, &meta, copy),
                    None => continue,
                },
            };
            self.update(update);
        }
    }

    /// Takes a read or fetch; returns true if the copy in force changed.
    pub fn update(&mut self, update: Update) -> bool {
        let state = self.lists.entry(update.source).or_default();
        match update.outcome {
            follow::Outcome::Copy { copy, from_cache } => {
                let changed = state.copy.as_deref() != Some(&*copy);
                state.copy = Some(copy);
                state.read_unix = Some(update.at_unix);
                state.from_cache = from_cache;
                if !from_cache {
                    state.checked_unix = Some(update.at_unix);
                    state.error = None;
                    state.failing_since_unix = None;
                }
                changed
            }
            follow::Outcome::Unchanged => {
                state.checked_unix = Some(update.at_unix);
                state.error = None;
                state.failing_since_unix = None;
                false
            }
            follow::Outcome::Failed(error) => {
                state.failing_since_unix.get_or_insert(update.at_unix);
                state.error = Some(error);
                false
            }
        }
    }

    /// Forgets lists `policy` no longer names.
    pub fn keep_only(&mut self, policy: &Policy) {
        let named: HashSet<&ListSource> = policy.lists.iter().map(|r| &r.source).collect();
        self.lists.retain(|source, _| named.contains(source));
    }

    fn copy(&self, source: &ListSource) -> Option<&ListCopy> {
        self.lists.get(source)?.copy.as_deref()
    }

    /// Each list of `policy` as `status` shows it.
    pub fn status(&self, policy: &Policy, in_force: &[InForce]) -> Vec<ListStatus> {
        policy
            .lists
            .iter()
            .zip(
                in_force
                    .iter()
                    .chain(std::iter::repeat(&InForce::default())),
            )
            .map(|(rule, in_force)| {
                let state = self.lists.get(&rule.source).cloned().unwrap_or_default();
                let (bad, bad_lines) = state
                    .copy
                    .as_ref()
                    .map_or((&[][..], 0), |c| (c.bad.as_slice(), c.bad_lines));
                ListStatus {
                    list: rule.source.to_string(),
                    rule: rule.describe(),
                    name: match &rule.action {
                        ListAction::Allow => "allow".to_string(),
                        ListAction::Deny { name, .. } => name.clone(),
                    },
                    entries: in_force.entries,
                    duplicates: in_force.duplicates,
                    covered_by_allow: in_force.covered_by_allow,
                    not_applied: in_force.not_applied.clone(),
                    bad_lines,
                    bad_lines_shown: bad.iter().map(ToString::to_string).collect(),
                    read_unix: state.read_unix,
                    from_cache: state.from_cache,
                    checked_unix: state.checked_unix,
                    error: state.error,
                    failing_since_unix: state.failing_since_unix,
                }
            })
            .collect()
    }
}

/// A list as `policy validate` reports it: a file is read and its bad lines shown; a URL
/// is fetched by the agent only.
pub fn check(rule: &ListRule) -> String {
    let describe = rule.describe();
    let ListSource::File(path) = &rule.source else {
        return format!(
            "{describe}: fetched by the agent every {}",
            humantime::format_duration(rule.refresh)
        );
    };
    let update = follow::read_file(path, memory::entry_bound(rule.capacity_cidrs));
    match update.outcome {
        Outcome::Copy { copy, .. } if copy.bad.is_empty() => {
            format!("{describe}: {} entries", copy.nets.len())
        }
        Outcome::Copy { copy, .. } => {
            let shown: Vec<String> = copy.bad.iter().map(ToString::to_string).collect();
            format!(
                "{describe}: {} entries; {} bad lines skipped: {}",
                copy.nets.len(),
                copy.bad_lines,
                shown.join("; ")
            )
        }
        Outcome::Unchanged => unreachable!("a file read is a copy or a failure"),
        Outcome::Failed(error) => {
            format!("{describe}: {error}; the agent applies it as empty until it can be read")
        }
    }
}

/// Entries per address family, to hold a list against `capacity.cidrs`.
#[derive(Default, Clone, Copy)]
struct Families {
    v4: usize,
    v6: usize,
}

impl Families {
    fn of<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let mut count = Self::default();
        for net in nets {
            match net {
                IpNet::V4(_) => count.v4 += 1,
                IpNet::V6(_) => count.v6 += 1,
            }
        }
        count
    }

    fn plus(self, other: Self) -> Self {
        Self {
            v4: self.v4 + other.v4,
            v6: self.v6 + other.v6,
        }
    }

    fn fits(self, capacity: u32) -> bool {
        self.v4.max(self.v6) <= capacity as usize
    }
}

/// Allow entries by prefix length, so "is this inside an allow entry" is one lookup per
/// length in use rather than a scan.
#[derive(Default)]
struct AllowIndex {
    by_len: BTreeMap<u8, foldhash::HashSet<IpNet>>,
}

impl AllowIndex {
    fn insert(&mut self, net: IpNet) {
        self.by_len.entry(net.prefix_len()).or_default().insert(net);
    }

    fn covers(&self, net: &IpNet) -> bool {
        // Most policies have no allow list to speak of; a million deny entries ask.
        if self.by_len.is_empty() {
            return false;
        }
        self.by_len.range(..=net.prefix_len()).any(|(&len, nets)| {
            IpNet::new(net.addr(), len).is_ok_and(|wider| nets.contains(&wider.trunc()))
        })
    }
}

/// `declared` with its lists' entries merged in, and how each list went in. Allow comes
/// first, as in the kernel: deny entries inside an allow entry (from a list, or declared
/// and covered by an allow list) are left out, since one trie holds both and the longer
/// prefix would win there. Entries already held are left out. A list whose entries would
/// take a family over `capacity.cidrs` is not applied, and says so.
pub fn expand(declared: &Policy, copies: &Copies) -> (Policy, Vec<InForce>) {
    let mut policy = declared.clone();
    let capacity = policy.capacity.cidrs;
    let mut in_force = vec![InForce::default(); policy.lists.len()];
    let mut listed = vec![Vec::new(); policy.lists.len()];

    let mut allowed = Held::of(&policy.allow);
    for (index, rule) in policy.lists.iter().enumerate() {
        if rule.action != ListAction::Allow {
            continue;
        }
        if let Some(copy) = copies.copy(&rule.source) {
            (in_force[index], listed[index]) = allowed.add(copy, capacity, |_| false);
        }
    }
    let mut allow_index = AllowIndex::default();
    for net in &allowed.nets {
        allow_index.insert(*net);
    }

    // Declared deny entries are inside declared allow entries never (validation), but may
    // be inside a list's.
    let declared_deny = std::mem::take(&mut policy.deny);
    let (covered, deny): (Vec<DenyRule>, Vec<DenyRule>) = declared_deny
        .into_iter()
        .partition(|d| allow_index.covers(&d.net));
    if !covered.is_empty() {
        tracing::warn!(
            count = covered.len(),
            first = %covered[0].net,
            "deny entries of the policy file are inside entries of an allow list; allow is checked first, so they do not apply"
        );
    }
    policy.deny = deny;
    let declared_nets: Vec<IpNet> = policy.deny.iter().map(|d| d.net).collect();
    let mut denied = Held::of(&declared_nets);
    for (index, rule) in policy.lists.iter().enumerate() {
        if rule.action == ListAction::Allow {
            continue;
        }
        if let Some(copy) = copies.copy(&rule.source) {
            (in_force[index], listed[index]) =
                denied.add(copy, capacity, |net| allow_index.covers(net));
        }
    }
    policy.listed = listed;
    (policy, in_force)
}

/// The entries of one kind (allow or deny) so far, and how many of each family. Hashed with
/// foldhash, not SipHash: SipHash was 17% of merging a million-entry list, and foldhash is
/// still seeded at random, so a feed cannot pick entries that collide.
struct Held {
    nets: foldhash::HashSet<IpNet>,
    count: Families,
}

impl Held {
    fn of(nets: &[IpNet]) -> Self {
        Self {
            nets: nets.iter().copied().collect(),
            count: Families::of(nets),
        }
    }

    /// Adds the entries of `copy` not held yet and not `covered` (counted as covered by an
    /// allow entry), in order, one hash operation each (a list may hold a million); or
    /// none of them if they would take a family over `capacity`.
    fn add(
        &mut self,
        copy: &ListCopy,
        capacity: u32,
        mut covered: impl FnMut(&IpNet) -> bool,
    ) -> (InForce, Vec<IpNet>) {
        let mut outcome = InForce::default();
        self.nets.reserve(copy.nets.len());
        let fresh: Vec<IpNet> = copy
            .nets
            .iter()
            .filter(|net| {
                if covered(net) {
                    outcome.covered_by_allow += 1;
                    return false;
                }
                self.nets.insert(**net)
            })
            .copied()
            .collect();
        outcome.duplicates = copy.nets.len() - outcome.covered_by_allow - fresh.len();
        let counted = self.count.plus(Families::of(&fresh));
        if !counted.fits(capacity) {
            for net in &fresh {
                self.nets.remove(net);
            }
            outcome.not_applied = Some(over_capacity(fresh.len(), capacity));
            return (outcome, Vec::new());
        }
        self.count = counted;
        outcome.entries = fresh.len();
        (outcome, fresh)
    }
}

fn over_capacity(entries: usize, capacity: u32) -> String {
    format!(
        "its {entries} entries would take a family over capacity.cidrs ({capacity}); raise it (a restart applies it)"
    )
}

#[cfg(test)]
mod tests;
