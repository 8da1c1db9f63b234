//! CrowdSec: the agent as a remediation component ("bouncer") of a CrowdSec Local API. It
//! pulls the decision stream, enforces `ban` decisions of scope Ip and Range in the kernel's
//! decision maps with the time each has left, and lifts what is deleted or ends. While the
//! Local API cannot be reached, what is enforced stays (each decision still ends on time in
//! the kernel), pulls back off, and `status` and the metrics say since when the decisions
//! are stale; the next pull that succeeds is a full resync.
//!
//! The stream gives each bouncer what was made since its last pull, by creation time; a
//! decision whose transaction commits after a pull began but was stamped before it (a bulk
//! `cscli decisions import` is written in batches) is never in an incremental answer. So
//! the sync resyncs in full once a burst of new decisions settles, and every
//! `FULL_RESYNC_INTERVAL` in any case; a resync rewrites only the entries that changed.
//!
//! With machine credentials the agent also shares the bans it makes (escalation and
//! response rules, in enforce mode): each is posted as an alert with a ban decision, which
//! every other node pulls. Its own decisions coming back are not held a second time.

pub mod lapi;
mod table;
mod watcher;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent_common::DecisionEntry;
use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use tokio::{sync::Notify, task::block_in_place};

use crate::{
    control::protocol::CrowdsecStatus,
    maps::{DecisionMaps, MapsError, Origin, monotonic_now_ns},
    policy::Mode,
    telemetry::Telemetry,
};
use lapi::{Lapi, Stream};
use table::{Applied, Table};
pub use watcher::Credentials;
use watcher::{SharedBan, Watcher};

/// Default time between pulls: short enough that a ban one node posts is in force on every
/// node within two seconds.
pub const DEFAULT_PULL_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between pulls while the Local API fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A ban already shared whose end is within this of the shared one is not posted again;
/// nor is a kernel entry rewritten whose end moves by less (a resync recomputes ends
/// from the time each decision has left).
const SHARE_SLACK_NS: u64 = 2_000_000_000;
/// New decisions in one pull from which the sync resyncs once the burst is over (see the
/// module's comment).
const BURST: usize = 100;
/// The longest time between full resyncs.
const FULL_RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// Where the decisions come from.
#[derive(Clone)]
pub struct Config {
    pub url: String,
    /// The bouncer's API key (`cscli bouncers add`), read from a file so that it is never
    /// on a command line.
    pub key: String,
    pub key_file: PathBuf,
    pub interval: Duration,
    /// Machine credentials, to share this node's bans; `None`: decisions are only pulled.
    pub machine: Option<Credentials>,
    /// This node's name in the bans it shares (`--node-name`, default the host name).
    pub node: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("key_file", &self.key_file)
            .field("interval", &self.interval)
            .field("machine", &self.machine)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads the key from `key_file` (and the machine's credentials from `machine_file`)
    /// and checks the URL (`url`, else the machine file's), before anything is loaded.
    pub fn load(
        url: Option<&str>,
        key_file: &Path,
        interval: Duration,
        machine_file: Option<&Path>,
        node: String,
    ) -> Result<Self> {
        let key = std::fs::read_to_string(key_file)
            .with_context(|| format!("reading the CrowdSec bouncer key {}", key_file.display()))?
            .trim()
            .to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!(
                "{}: expected one bouncer API key (from `cscli bouncers add`) on one line",
                key_file.display()
            );
        }
        if interval.is_zero() {
            bail!("the CrowdSec pull interval must be more than zero");
        }
        let machine = machine_file.map(Credentials::load).transpose()?;
        let Some(url) = url.or(machine.as_ref().and_then(|m| m.url.as_deref())) else {
            bail!(
                "--crowdsec-key-file needs the Local API's URL: --crowdsec-url, or a machine \
                 file (--crowdsec-machine-file) with a url"
            );
        };
        Lapi::new(url, key.clone())?;
        let url = url.to_string();
        Ok(Self {
            url,
            key,
            key_file: key_file.to_path_buf(),
            interval,
            machine,
            node,
        })
    }
}

/// The decision sync: the table of decisions held, the maps it keeps in step with it, and
/// what `status` and the metrics read.
struct Sync {
    table: Table,
    maps: DecisionMaps,
    status: CrowdsecStatus,
    /// The next pull asks for every decision (the first, and the first after a failure).
    resync: bool,
    /// This node's bans already posted, with their ends (`CLOCK_MONOTONIC` ns).
    shared: HashMap<IpNet, u64>,
    /// What the kernel's maps hold: read once at the first full pull, then kept as written.
    written: HashMap<IpNet, DecisionEntry>,
    /// A pull brought a burst of new decisions: resync once a pull brings none.
    burst: bool,
    /// When the last full resync was pulled.
    last_full: Option<std::time::Instant>,
}

/// Pulls decisions (and shares this node's bans) until the agent stops (the task is
/// aborted). `bans_made` wakes it when the kernel reports a new ban, so that the ban
/// reaches the other nodes without waiting for the next pull.
pub async fn run(
    config: Config,
    maps: DecisionMaps,
    telemetry: Arc<Telemetry>,
    bans_made: Arc<Notify>,
) {
    let lapi = Lapi::new(&config.url, config.key.clone()).expect("checked by Config::load");
    let mut watcher = config.machine.clone().map(|credentials| {
        Watcher::new(&config.url, credentials, config.node.clone())
            .expect("checked by Config::load")
    });
    let mut sync = Sync {
        table: Table::default(),
        maps,
        status: CrowdsecStatus {
            lapi_url: config.url.clone(),
            stale_since_unix: Some(unix_now()),
            ..CrowdsecStatus::default()
        },
        resync: true,
        shared: HashMap::new(),
        written: HashMap::new(),
        burst: false,
        last_full: None,
    };
    telemetry.set_crowdsec(sync.status.clone());
    let mut wait = config.interval;
    loop {
        let startup = sync.resync
            || sync
                .last_full
                .is_none_or(|at| at.elapsed() >= FULL_RESYNC_INTERVAL);
        let pulled = lapi.pull(startup).await;
        if let Some(watcher) = &mut watcher {
            // After the pull: a startup pull tells which bans were shared before a restart.
            if pulled.is_ok() {
                sync.share(watcher, &telemetry).await;
            }
        }
        let own = |d: &lapi::Decision| watcher.as_ref().is_some_and(|w| w.is_own(d));
        match pulled {
            Ok(stream) => match block_in_place(|| sync.take(&stream, startup, own)) {
                Ok(()) => wait = config.interval,
                Err(e) => {
                    // The maps refused a write: pull everything again next time.
                    sync.resync = true;
                    telemetry.count_runtime_error("crowdsec decisions");
                    tracing::error!(error = %e, "writing CrowdSec decisions failed; resyncing");
                }
            },
            Err(e) => {
                if sync.status.last_error.is_none() {
                    tracing::warn!(error = %e, url = config.url, "the CrowdSec Local API cannot be reached; the decisions in force stay");
                }
                sync.failed(e.to_string());
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
        if startup {
            // Addresses all lifted: the kernel stops looking for them.
            if let Err(e) = sync.maps.refresh_marks() {
                telemetry.count_runtime_error("crowdsec decisions");
                tracing::error!(error = %e, "marking the decision maps failed");
            }
            release_freed_memory();
        }
        if let Err(e) = block_in_place(|| sync.expire()) {
            telemetry.count_runtime_error("crowdsec decisions");
            tracing::error!(error = %e, "lifting ended CrowdSec decisions failed");
        }
        telemetry.set_crowdsec(sync.status.clone());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = bans_made.notified(), if watcher.is_some() => {}
        }
    }
}

impl Sync {
    fn take(
        &mut self,
        stream: &Stream,
        startup: bool,
        is_own: impl Fn(&lapi::Decision) -> bool,
    ) -> Result<(), MapsError> {
        let Applied {
            touched,
            ignored,
            own,
        } = self
            .table
            .apply(stream, startup, monotonic_now_ns(), is_own);
        if self.last_full.is_none() {
            // The first full pull: what the maps hold (an earlier agent's pins after a
            // restart) is read once, so that entries already right are not rewritten and
            // the rest are lifted below. From then on `written` says what they hold.
            self.written = self.maps.entries()?.into_iter().collect();
        }
        self.write(&touched)?;
        if startup {
            self.last_full = Some(std::time::Instant::now());
            self.burst = false;
        } else if stream.new.len() >= BURST {
            self.burst = true;
        } else if self.burst && stream.new.is_empty() {
            self.burst = false;
            self.resync = true;
        }
        for (net, expires_ns) in own {
            // Shared by this node before (an earlier run, or just now): not again.
            let shared = self.shared.entry(net).or_default();
            *shared = (*shared).max(expires_ns);
            *self.status.ignored.entry("own".to_string()).or_default() += 1;
        }
        if startup {
            // What the maps hold that the Local API no longer has (an earlier agent's pins,
            // or what a missed deletion left).
            let gone: Vec<IpNet> = self
                .written
                .keys()
                .filter(|net| self.table.entry(**net).is_none())
                .copied()
                .collect();
            for net in &gone {
                self.maps.remove(*net)?;
                self.written.remove(net);
            }
            tracing::info!(
                decisions = self.written.len(),
                lifted = gone.len(),
                "CrowdSec decisions in sync with the Local API"
            );
        } else if !stream.new.is_empty() || !stream.deleted.is_empty() {
            tracing::info!(
                new = stream.new.len(),
                deleted = stream.deleted.len(),
                "CrowdSec decisions pulled"
            );
        }
        for why in ignored {
            *self.status.ignored.entry(why.label()).or_default() += 1;
        }
        if startup {
            self.resync = false;
        }
        self.status.pulls += 1;
        self.status.last_success_unix = Some(unix_now());
        self.status.stale_since_unix = None;
        self.status.last_error = None;
        // Counting walks the table: only when the pull changed something.
        if !touched.is_empty() {
            self.count();
        }
        Ok(())
    }

    /// Posts the bans this node made (enforced ones, not yet shared) to the Local API. A
    /// failure is counted and the bans are tried again next time.
    async fn share(&mut self, watcher: &mut Watcher, telemetry: &Telemetry) {
        let bans = match block_in_place(|| telemetry.blocks_and_bans()) {
            Ok(bans) => bans,
            Err(e) => {
                telemetry.count_runtime_error("crowdsec share");
                tracing::error!(error = %e, "reading the bans to share failed");
                return;
            }
        };
        let rules = telemetry.in_force().rules.clone();
        let now = monotonic_now_ns();
        let mine: HashMap<IpNet, (u64, u32)> = bans
            .iter()
            .filter(|b| b.origin == Origin::Escalation && rules.mode(b.rule) == Mode::Enforce)
            .map(|b| (b.net, (b.expires_ns, b.rule)))
            .collect();
        self.shared.retain(|net, _| mine.contains_key(net));
        let new: Vec<(SharedBan, u64)> = mine
            .iter()
            .filter(|(net, (expires_ns, _))| {
                // Within a second: the end a decision comes back with is computed from the
                // time it had left.
                self.shared
                    .get(net)
                    .is_none_or(|&shared| shared + SHARE_SLACK_NS < *expires_ns)
            })
            .map(|(net, &(expires_ns, rule))| {
                let ban = SharedBan {
                    net: *net,
                    rule: rules.name(rule),
                    left: Duration::from_nanos(expires_ns.saturating_sub(now)),
                };
                (ban, expires_ns)
            })
            .collect();
        if new.is_empty() {
            return;
        }
        let bans: Vec<SharedBan> = new.iter().map(|(ban, _)| ban.clone()).collect();
        match watcher.post(&bans).await {
            Ok(()) => {
                for (ban, expires_ns) in new {
                    tracing::info!(net = %ban.net, rule = ban.rule, "ban shared through the CrowdSec Local API");
                    self.shared.insert(ban.net, expires_ns);
                    self.status.bans_shared += 1;
                }
                self.status.last_share_error = None;
            }
            Err(e) => {
                if self.status.last_share_error.is_none() {
                    tracing::warn!(error = %e, "sharing bans through the CrowdSec Local API failed; trying again");
                }
                self.status.share_errors += 1;
                self.status.last_share_error = Some(e.to_string());
            }
        }
    }

    fn failed(&mut self, error: String) {
        self.resync = true;
        self.status.pull_errors += 1;
        self.status.last_error = Some(error);
        self.status.stale_since_unix.get_or_insert_with(unix_now);
    }

    /// Lifts the decisions that ended (the kernel already ignores them).
    fn expire(&mut self) -> Result<(), MapsError> {
        let ended = self.table.expire(monotonic_now_ns());
        if !ended.is_empty() {
            self.write(&ended)?;
            self.count();
        }
        Ok(())
    }

    /// Brings the kernel's entry for each of `nets` in line with the table, leaving alone
    /// those already as the table says (within `SHARE_SLACK_NS`). When it made room in full
    /// maps, the decisions waiting for room are written too.
    fn write(&mut self, nets: &HashSet<IpNet>) -> Result<(), MapsError> {
        let removed = self.write_nets(nets)?;
        if removed && self.status.over_capacity > 0 {
            let waiting: HashSet<IpNet> = self
                .table
                .nets()
                .filter(|net| !self.written.contains_key(net))
                .copied()
                .collect();
            self.write_nets(&waiting)?;
        }
        Ok(())
    }

    /// `write` for `nets` alone; true when it removed an entry.
    fn write_nets(&mut self, nets: &HashSet<IpNet>) -> Result<bool, MapsError> {
        let mut removed = false;
        for &net in nets {
            match self.table.entry(net) {
                Some(entry) => {
                    let same = self.written.get(&net).is_some_and(|w| {
                        w.origin == entry.origin
                            && w.expires_ns.abs_diff(entry.expires_ns) < SHARE_SLACK_NS
                    });
                    if !same {
                        match self.maps.set(net, entry) {
                            Ok(()) => {
                                self.written.insert(net, entry);
                            }
                            // The map is full (capacity.decisions): this one waits for
                            // room (a later write of it, or the next full resync).
                            Err(e) if is_full(&e) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                None => {
                    removed |= self.maps.remove(net)?;
                    self.written.remove(&net);
                }
            }
        }
        Ok(removed)
    }

    /// What `status` says is enforced: what the kernel's maps hold, by origin, and what the
    /// table holds beyond their capacity.
    fn count(&mut self) {
        let mut by_origin: BTreeMap<String, usize> = BTreeMap::new();
        for entry in self.written.values() {
            *by_origin
                .entry(
                    agent_common::decision::Origin::from_code(entry.origin)
                        .name()
                        .to_string(),
                )
                .or_default() += 1;
        }
        self.status.decisions = by_origin;
        let over = self
            .table
            .nets()
            .filter(|net| !self.written.contains_key(net))
            .count();
        if over > 0 && self.status.over_capacity == 0 {
            tracing::warn!(
                over,
                "the decision maps are full: raise capacity.decisions; these decisions are not enforced"
            );
        }
        self.status.over_capacity = over;
    }
}

/// True when a write failed because the map is full.
fn is_full(error: &MapsError) -> bool {
    matches!(
        error,
        MapsError::Map {
            source: aya::maps::MapError::SyscallError(e),
            ..
        } if matches!(e.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG))
    )
}

/// Without a Local API to follow, decisions an earlier agent left pinned are lifted: they
/// are enforced only while the agent follows their source.
pub fn lift_all(maps: &mut DecisionMaps) -> Result<usize, MapsError> {
    let mut lifted = 0;
    for (net, _) in maps.entries()? {
        if maps.remove(net)? {
            lifted += 1;
        }
    }
    maps.refresh_marks()?;
    Ok(lifted)
}

/// Gives the memory a full pull freed (its JSON, its decisions as parsed: tens of MiB for a
/// large blocklist) back to the system, which glibc's allocator otherwise keeps. (musl's,
/// in the static image, returns it by itself.)
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only hands free heap pages back; nothing in use moves.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn configuration_errors_say_what_to_fix() {
        let dir = std::env::temp_dir().join(format!("pc-crowdsec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = file(&dir, "key", "0123abcd\n");
        let second = Duration::from_secs(1);
        let load = |url: Option<&str>, key: &Path, machine: Option<&Path>| {
            Config::load(url, key, second, machine, "node-a".into()).map_err(|e| format!("{e:#}"))
        };
        let config = load(Some("http://127.0.0.1:8080"), &key, None).unwrap();
        assert_eq!(config.key, "0123abcd");
        assert!(
            !format!("{config:?}").contains("0123abcd"),
            "the key is not printed"
        );

        let machine = file(
            &dir,
            "machine.yaml",
            "url: http://10.0.0.1:8080\nlogin: fleet\npassword: s3cret-s3cret\n",
        );
        let config = load(None, &key, Some(&machine)).unwrap();
        assert_eq!(config.url, "http://10.0.0.1:8080", "the machine file's url");
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the password is not printed"
        );
        let config = load(Some("http://lapi:8080"), &key, Some(&machine)).unwrap();
        assert_eq!(config.url, "http://lapi:8080", "the flag wins");

        for (url, key_text, machine_text, want) in [
            (None, "k", None, "needs the Local API's URL"),
            (Some("http://x"), "", None, "expected one bouncer API key"),
            (
                Some("http://x"),
                "two words",
                None,
                "expected one bouncer API key",
            ),
            (Some("lapi:8080"), "k", None, "is not a Local API URL"),
            (
                Some("http://x"),
                "k",
                Some("login: fleet\n"),
                "needs a login and a password",
            ),
            (
                Some("http://x"),
                "k",
                Some("[not, a, map]"),
                "expected the YAML",
            ),
        ] {
            let key = file(&dir, "key2", key_text);
            let machine = machine_text.map(|text| file(&dir, "machine2.yaml", text));
            let error = load(url, &key, machine.as_deref()).unwrap_err();
            assert!(error.contains(want), "{error}");
        }
        let missing = load(Some("http://x"), &dir.join("nowhere"), None).unwrap_err();
        assert!(
            missing.contains("reading the CrowdSec bouncer key"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
