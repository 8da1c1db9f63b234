//! `portcullis run`: load, apply the policy, attach, then serve events, control requests,
//! reloads and summaries until SIGTERM or SIGINT, and detach what we attached.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::SignalKind,
    sync::{broadcast, mpsc, oneshot},
    task::block_in_place,
    time::MissedTickBehavior,
};

use crate::{
    census,
    control::server::{Call, Server},
    crowdsec,
    daemon::{Daemon, DaemonParts},
    enforcer::Enforcer,
    events::{self, Clock, Output},
    history::History,
    http, lists,
    loader::{self, Attachment, Hook, XdpModeOption},
    maps::{self, Counters, KernelMaps},
    policy::{self, Mode, Policy, PolicyError},
    telemetry::{Attached, InForce, Telemetry},
    watch,
};

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub policy: PathBuf,
    pub hook: Hook,
    pub xdp_mode: XdpModeOption,
    pub pin_dir: PathBuf,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    /// Where to serve /metrics, /healthz and /readyz, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    pub on_exit: OnExit,
    /// Remove an XDP program another tool attached instead of refusing to start.
    pub replace_foreign_xdp: bool,
    /// Have the kernel time BPF programs while the agent runs, for the run-time metrics.
    pub bpf_stats: bool,
    pub summary_interval: Duration,
    /// The CrowdSec Local API whose decisions are enforced, if any.
    pub crowdsec: Option<crowdsec::Config>,
}

/// How long shutdown may take to flush events before detaching anyway.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Expired bans are removed from the maps this often.
const BAN_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// File watchers report a burst of events for one save; wait for it to settle.
const RELOAD_SETTLE: Duration = Duration::from_millis(150);
/// Event lines buffered for `events --follow` clients; a slower client is told how many
/// it missed.
const EVENT_FOLLOWERS_BUFFER: usize = 4096;

/// What happens to the programs when the agent exits cleanly (SIGTERM or SIGINT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Detach the programs and remove the pins: nothing is left behind.
    Detach,
    /// Leave the programs attached and the maps pinned, enforcing the last policy until the
    /// next agent takes them over (an upgrade) or `portcullis detach` removes them.
    Keep,
}

/// The policy an agent starts with.
pub struct StartPolicy {
    pub policy: Policy,
    /// The text in force: the file's, or a kept version's.
    pub text: String,
    /// Run-time mode switches of a kept version.
    pub modes: BTreeMap<String, Mode>,
    /// The policy file's text as read (empty if it could not be read).
    pub file_text: String,
    /// Why the file is not what is in force: its error, with the line.
    pub file_error: Option<String>,
}

/// The policy to start with: the file's; or, if the file cannot be read or is invalid and
/// the state directory keeps a version, the last version that was in force (loudly: the log,
/// `status` and `/readyz` say which version runs and why). With no kept version, the file's
/// error.
pub fn start_policy(path: &Path, state_dir: &Path) -> Result<StartPolicy, PolicyError> {
    let file = policy::read(path);
    let file_text = file.as_ref().cloned().unwrap_or_default();
    let error = match file.and_then(|text| policy::parse(path, &text).map(|p| (p, text))) {
        Ok((policy, text)) => {
            return Ok(StartPolicy {
                policy,
                text,
                modes: BTreeMap::new(),
                file_text,
                file_error: None,
            });
        }
        Err(e) => e,
    };
    let history = History::load(state_dir);
    let Some(kept) = history.current() else {
        return Err(error);
    };
    let source = PathBuf::from(format!("version {}", kept.number));
    let Ok(policy) = policy::parse(&source, &kept.text)
        .map_err(|_| ())
        .and_then(|p| p.with_modes(&kept.modes).map_err(|_| ()))
    else {
        return Err(error);
    };
    tracing::error!(
        error = %error,
        version = kept.number,
        "the policy file is not usable; starting with the last version that was in force"
    );
    Ok(StartPolicy {
        policy,
        text: kept.text.clone(),
        modes: kept.modes.clone(),
        file_text,
        file_error: Some(error.to_string()),
    })
}

/// Runs the agent with the policy to start with.
pub async fn run(options: RunOptions, start: StartPolicy) -> Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        interfaces = ?options.ifaces,
        "portcullis starting"
    );
    raise_open_file_limit();
    loader::ensure_bpffs(&options.pin_dir)?;
    let mut ifindexes = HashMap::new();
    for iface in &options.ifaces {
        ifindexes.insert(loader::ifindex(iface)?, iface.clone());
    }
    let _lock = loader::PinDirLock::take(&options.pin_dir)?;
    let _bpf_stats = if options.bpf_stats {
        Some(crate::bpf_stats::enable().context("enabling BPF run-time statistics")?)
    } else {
        None
    };
    // Maps a previous agent left (it crashed, or exited with --on-exit keep) are taken over
    // with their contents: bans, buckets, and the policy it had in force, which keeps
    // enforcing until ours replaces it.
    let adopting = loader::maps_pinned(&options.pin_dir);
    let start = Start {
        policy: start,
        adopting,
    };
    match start_and_serve(&options, start, ifindexes).await {
        Ok(Exit::Detached) => loader::remove_pins(&options.pin_dir),
        Ok(Exit::Kept) => Ok(()),
        // A start that fails must not take away the protection a previous agent left.
        Err(e) if adopting => Err(e),
        Err(e) => {
            let _ = loader::remove_pins(&options.pin_dir);
            Err(e)
        }
    }
}

/// Raises the soft open-file limit to the hard one: every connection to the metrics
/// endpoint and the control socket holds a descriptor, and the soft default (often 1024)
/// is soon reached. Failing that is logged; the connection caps still hold.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill and then read.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        tracing::debug!(open_files = limit.rlim_cur, "open-file limit raised");
    } else {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "the open-file limit could not be raised"
        );
    }
}

async fn start_and_serve(
    options: &RunOptions,
    start: Start,
    ifindexes: HashMap<u32, String>,
) -> Result<Exit> {
    let maps_dir = loader::maps_dir(&options.pin_dir);
    let replaced = if start.adopting {
        loader::check_pinned_maps(&maps_dir, &start.policy.policy.capacity)?
    } else {
        Vec::new()
    };
    let history = History::load(&options.state_dir);
    let server = Server::bind(&options.control_socket).await?;
    let metrics = match options.metrics {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let listeners = Listeners {
        control: server,
        metrics,
    };
    if !replaced.is_empty() {
        tracing::warn!(
            maps = %replaced.join(", "),
            "pinned maps of another layout (another version, or a changed capacity) are \
             replaced by fresh ones; the running programs keep theirs until ours replace them \
             (counters in them start from zero, token buckets full)"
        );
        loader::unpin_replaced(&maps_dir, &replaced)?;
    }
    let mut ebpf = loader::load(&start.policy.policy.capacity, &maps_dir)?;
    serve(options, start, history, listeners, &mut ebpf, ifindexes).await
}

/// The sockets the agent serves, bound before anything is loaded so a port in use fails
/// the start early.
struct Listeners {
    control: Server,
    metrics: Option<tokio::net::TcpListener>,
}

struct Start {
    policy: StartPolicy,
    adopting: bool,
}

enum Exit {
    Detached,
    Kept,
}

async fn serve(
    options: &RunOptions,
    start: Start,
    history: History,
    listeners: Listeners,
    ebpf: &mut aya::Ebpf,
    ifaces: HashMap<u32, String>,
) -> Result<Exit> {
    let Start {
        policy:
            StartPolicy {
                policy,
                text,
                modes,
                file_text,
                file_error,
            },
        adopting,
    } = start;
    let ring: RingBuf<MapData> = ebpf
        .take_map(agent_common::maps::EVENTS.name)
        .context("EVENTS map missing")?
        .try_into()?;
    let KernelMaps {
        policy: policy_maps,
        bans,
        mut decisions,
        telemetry,
    } = KernelMaps::take(ebpf)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as u32;
    // List files, and the cached copies of list URLs: what a restart enforces at once.
    let mut list_copies = lists::Copies::default();
    list_copies.read_local(&policy, &options.state_dir);
    let (expanded, lists_in_force) = lists::expand(&policy, &list_copies);
    // The policy is in the maps before any program runs (or, when taking over, before the
    // new programs replace the old): there is no moment where traffic meets no policy.
    let enforcer = if adopting {
        tracing::info!(pin_dir = %options.pin_dir.display(), "taking over the pinned maps of a previous agent");
        Enforcer::adopt(policy_maps, expanded, cpus, &options.state_dir)?
    } else {
        Enforcer::new(policy_maps, expanded, cpus, Some(&options.state_dir))?
    };
    let telemetry = Arc::new(Telemetry::new(
        telemetry,
        InForce {
            version: 0,
            file_error: None,
            rules: enforcer.rules_in_force(),
            allow_entries: 0,
            deny_entries: 0,
            capacity: enforcer.policy().capacity,
            lists: Vec::new(),
        },
    ));
    // The event reader wakes the CrowdSec sync when the kernel makes a ban, to share it.
    let bans_made = Arc::new(tokio::sync::Notify::new());
    let crowdsec = match &options.crowdsec {
        Some(config) => {
            tracing::info!(url = config.url, interval = ?config.interval, "following the CrowdSec Local API's decisions");
            Some(tokio::spawn(crowdsec::run(
                config.clone(),
                decisions,
                telemetry.clone(),
                bans_made.clone(),
            )))
        }
        None => {
            match crowdsec::lift_all(&mut decisions) {
                Ok(0) => {}
                Ok(lifted) => tracing::info!(
                    lifted,
                    "no CrowdSec Local API to follow: the decisions an earlier agent left are lifted"
                ),
                Err(e) => carry_on(&telemetry, "crowdsec decisions", &e),
            }
            None
        }
    };
    let (wanted_lists, wanted) = tokio::sync::watch::channel(policy.lists.clone());
    let (list_updates_tx, list_updates) = mpsc::channel(16);
    let following_lists = tokio::spawn(lists::follow(
        wanted,
        list_updates_tx,
        options.state_dir.clone(),
    ));
    let mut daemon = Daemon::new(DaemonParts {
        enforcer,
        declared: policy,
        lists: list_copies,
        lists_in_force,
        wanted_lists,
        state_dir: options.state_dir.clone(),
        bans,
        telemetry: telemetry.clone(),
        history,
        policy_path: options.policy.clone(),
        text,
        modes,
        file_text,
        file_error,
        pin_dir: options.pin_dir.clone(),
        took_over_maps: adopting,
    })?;

    let mut attachments: Vec<Attachment> = Vec::new();
    let mut attached = Vec::new();
    for iface in &options.ifaces {
        let ingress = loader::attach(
            ebpf,
            iface,
            options.hook,
            options.xdp_mode,
            options.replace_foreign_xdp,
            &options.pin_dir,
        );
        match ingress.and_then(|a| with_egress(ebpf, iface, &options.pin_dir, a)) {
            Ok((a, egress)) => {
                log_attached(&a);
                log_attached(&egress);
                attachments.push(egress);
                let ifindex = ifaces
                    .iter()
                    .find_map(|(index, name)| (name == &a.iface).then_some(*index))
                    .unwrap_or(0);
                attached.push(Attached {
                    iface: a.iface.clone(),
                    ifindex,
                    hook: a.hook,
                    program_id: a.program_id,
                    adopted: a.adopted,
                    pin_path: a.pin_path.clone(),
                });
                attachments.push(a);
            }
            Err(e) => {
                // Links taken over stay: the previous agent's protection must not lapse
                // because this start failed.
                for a in attachments {
                    if a.adopted {
                        a.keep();
                    } else {
                        let _ = a.detach();
                    }
                }
                return Err(e);
            }
        }
    }
    let counted: Vec<(String, u32)> = attached
        .iter()
        .map(|a| (a.iface.clone(), a.ifindex))
        .collect();
    telemetry.set_attached(attached);
    census::spawn(&telemetry);
    for (a, b) in maps::shared_counter_slots(&counted) {
        tracing::warn!(
            a,
            b,
            "these interfaces share a counter slot: their per-interface packet counts are added together"
        );
    }
    for iface in loader::detach_others(&options.pin_dir, &attachments)? {
        tracing::info!(
            link = iface,
            "detached a previous agent's link this agent was not asked to keep"
        );
    }

    let (calls_tx, calls) = mpsc::channel(64);
    let (followers, _) = broadcast::channel(EVENT_FOLLOWERS_BUFFER);
    let metrics = listeners
        .metrics
        .map(|listener| tokio::spawn(http::serve(listener, telemetry.clone())));
    let server = listeners.control;
    let control_followers = followers.clone();
    // The server moves into the task, so aborting it at exit removes the socket file.
    let control_telemetry = telemetry.clone();
    let control = tokio::spawn(async move {
        server
            .serve(calls_tx, control_followers, control_telemetry)
            .await
    });
    // SAFETY: the ring buffer owns its fd and outlives the registration, which is dropped
    // with it when the event loop ends.
    let ring = unsafe { AsyncFd::register(ring) }.context("polling the event ring buffer")?;
    let (_watcher, changes) = watch::watch(&options.policy)?;
    // Installed before "ready" is logged, so a SIGTERM right after start is a clean stop.
    let signals = Signals {
        term: tokio::signal::unix::signal(SignalKind::terminate())?,
        int: tokio::signal::unix::signal(SignalKind::interrupt())?,
    };
    tracing::info!(
        policy = %options.policy.display(),
        version = daemon.version(),
        interfaces = attachments.len(),
        control_socket = %options.control_socket.display(),
        "ready"
    );

    let (stop_reporting, stopped) = oneshot::channel();
    let reporting = tokio::spawn(report(
        ring,
        telemetry.clone(),
        ifaces.clone(),
        followers,
        options.summary_interval,
        stopped,
        bans_made,
    ));
    for warning in daemon.list_warnings() {
        tracing::warn!("{warning}");
    }
    let inputs = Inputs {
        changes,
        calls,
        list_updates,
        signals,
    };
    main_loop(&mut daemon, &telemetry, options, inputs).await;
    tracing::info!("shutting down");
    let _ = stop_reporting.send(());
    if let Err(e) = reporting.await {
        tracing::error!(error = %e, "the event task failed");
    }
    control.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(crowdsec) = crowdsec {
        crowdsec.abort();
    }
    following_lists.abort();
    match options.on_exit {
        OnExit::Detach => {
            detach_all(attachments);
            Ok(Exit::Detached)
        }
        OnExit::Keep => {
            for a in attachments {
                tracing::info!(iface = a.iface, "left attached (--on-exit keep)");
                a.keep();
            }
            Ok(Exit::Kept)
        }
    }
}

fn detach_all(attachments: Vec<Attachment>) {
    for attachment in attachments {
        let iface = attachment.iface.clone();
        match attachment.detach() {
            Ok(()) => tracing::info!(iface, "detached"),
            Err(e) => tracing::error!(iface, error = format!("{e:#}"), "detaching failed"),
        }
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// After a failed read of the event ring, wait this long before the next, so a ring that
/// keeps failing cannot spin the loop.
const RING_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Logs and counts an error of a run-time job (`what`, a metric label) that the agent
/// carries on after.
fn carry_on(telemetry: &Telemetry, what: &'static str, error: &dyn std::fmt::Display) {
    telemetry.count_runtime_error(what);
    tracing::error!(%error, what, "failed; carrying on");
}

/// How often the main loop comes round at least, for liveness.
const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until SIGTERM or SIGINT: control requests, reloads and the ban sweep, each on this
/// loop one at a time (they change what is in force), with the synchronous work off the
/// runtime's async threads. An error is logged and counted, and the loop goes on: nothing
/// that happens at run time takes the programs away.
/// What the main loop waits for.
struct Inputs {
    /// Events in the policy file's directory.
    changes: mpsc::Receiver<()>,
    calls: mpsc::Receiver<Call>,
    /// Reads of the policy's IP lists.
    list_updates: mpsc::Receiver<lists::Update>,
    signals: Signals,
}

async fn main_loop(
    daemon: &mut Daemon,
    telemetry: &Telemetry,
    options: &RunOptions,
    inputs: Inputs,
) {
    let Inputs {
        mut changes,
        mut calls,
        mut list_updates,
        mut signals,
    } = inputs;
    let mut sweep = tokio::time::interval(BAN_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beat = tokio::time::interval(BEAT_INTERVAL);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        telemetry.beat();
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = beat.tick() => {}
            Some(call) = calls.recv() => {
                let response = block_in_place(|| daemon.handle(call.request, call.uid));
                let _ = call.reply.send(response);
            }
            Some(()) = changes.recv() => {
                tokio::time::sleep(RELOAD_SETTLE).await;
                while changes.try_recv().is_ok() {}
                match block_in_place(|| daemon.reload_file()) {
                    Ok(Some(version)) => {
                        tracing::info!(policy = %options.policy.display(), version, "policy reloaded");
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "policy not reloaded; the previous policy stays in force"
                    ),
                }
            }
            Some(update) = list_updates.recv() => {
                if let Err(e) = block_in_place(|| daemon.list_update(update)) {
                    carry_on(telemetry, "list apply", &e);
                }
            }
            _ = sweep.tick() => {
                match block_in_place(|| daemon.sweep_bans()) {
                    Ok(swept) => {
                        if swept.moved > 0 {
                            tracing::info!(moved = swept.moved, "blocks moved from the ban maps an earlier agent kept them in to the block maps");
                        }
                        if !swept.blocks.is_empty() || swept.bans > 0 || swept.covered > 0 {
                            tracing::debug!(blocks = swept.blocks.len(), bans = swept.bans, covered = swept.covered, "ended blocks, ended or void bans and bans a wider one covers removed");
                        }
                    }
                    Err(e) => carry_on(telemetry, "ban sweep", &e),
                }
            }
        }
    }
}

/// Reads the event ring and writes events and summaries to stdout (and to `events
/// --follow` clients), on a task of its own so that a long apply cannot let the ring
/// overflow. Once `stop` fires it drains what the kernel already wrote, within a deadline.
async fn report(
    mut ring: AsyncFd<RingBuf<MapData>>,
    telemetry: Arc<Telemetry>,
    ifaces: HashMap<u32, String>,
    followers: broadcast::Sender<String>,
    summary_interval: Duration,
    mut stop: oneshot::Receiver<()>,
    bans_made: Arc<tokio::sync::Notify>,
) {
    let clock = Clock::new();
    let mut summary = tokio::time::interval(summary_interval);
    summary.set_missed_tick_behavior(MissedTickBehavior::Delay);
    summary.tick().await;
    let mut last_counters = Counters::default();
    let mut output = Output::stdout();
    let failed = |what: &'static str, error: &dyn std::fmt::Display| {
        carry_on(&telemetry, what, error);
    };

    loop {
        tokio::select! {
            _ = &mut stop => break,
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(e) => {
                        failed("event ring", &e);
                        tokio::time::sleep(RING_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let ring = guard.get_inner_mut();
                let in_force = telemetry.in_force();
                let mut lines = Vec::new();
                while let Some(record) = ring.next() {
                    if let Some(event) = parse_event(&record) {
                        if event.action == agent_common::EventAction::Banned.code() {
                            bans_made.notify_one();
                        }
                        lines.push(events::format(&event, &clock, &in_force.rules, &ifaces));
                    }
                }
                guard.clear_ready();
                telemetry.count_unwritten_lines(output.write(&lines));
                for line in lines {
                    // Nobody following is the common case, not an error.
                    let _ = followers.send(line);
                }
            }
            _ = summary.tick() => {
                match block_in_place(|| summary_line(&telemetry, &last_counters)) {
                    Ok(Some((line, counters))) => {
                        telemetry.count_unwritten_lines(output.write(&[line]));
                        last_counters = counters;
                    }
                    Ok(None) => {}
                    Err(e) => failed("summary", &e),
                }
            }
        }
    }

    // Drain what the kernel already wrote, within the deadline: programs left attached
    // (`--on-exit keep`) go on writing, so the ring may never be empty.
    let ring = ring.get_mut();
    let in_force = telemetry.in_force();
    let mut lines = Vec::new();
    let drained = events::drain(
        Instant::now() + DRAIN_DEADLINE,
        || ring.next().map(|record| parse_event(&record)),
        |event| lines.push(events::format(&event, &clock, &in_force.rules, &ifaces)),
    );
    if drained == events::Drained::DeadlinePassed {
        tracing::warn!("event drain deadline passed");
    }
    match summary_line(&telemetry, &last_counters) {
        Ok(Some((line, _))) => lines.push(line),
        Ok(None) => {}
        Err(e) => failed("summary", &e),
    }
    telemetry.count_unwritten_lines(output.write(&lines));
}

/// The summary line, if the counters moved since `last`, with the counters it reports.
fn summary_line(
    telemetry: &Telemetry,
    last: &Counters,
) -> Result<Option<(String, Counters)>, crate::maps::MapsError> {
    let counters = telemetry.counters()?;
    if counters == *last {
        return Ok(None);
    }
    let rules = telemetry.rule_counters()?;
    Ok(Some((events::summary(&counters, last, &rules), counters)))
}

fn parse_event(record: &[u8]) -> Option<agent_common::Event> {
    if record.len() < std::mem::size_of::<agent_common::Event>() {
        return None;
    }
    // SAFETY: the length is checked and Event is plain old data; the ring buffer gives no
    // alignment guarantee beyond 8 bytes, so read unaligned to be safe.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}

/// Attaches the egress program to `iface` beside its ingress attachment `ingress`: egress
/// counts the server's responses for response rules and judges nothing, so it is not
/// listed with the interface's enforcing program. If it cannot attach, `ingress` is undone
/// (a link taken over from a previous agent is kept) and the start fails.
fn with_egress(
    ebpf: &mut aya::Ebpf,
    iface: &str,
    pin_dir: &std::path::Path,
    ingress: Attachment,
) -> Result<(Attachment, Attachment)> {
    match loader::attach_egress(ebpf, iface, pin_dir) {
        Ok(egress) => Ok((ingress, egress)),
        Err(e) => {
            if ingress.adopted {
                ingress.keep();
            } else {
                let _ = ingress.detach();
            }
            Err(e)
        }
    }
}

fn log_attached(a: &Attachment) {
    tracing::info!(
        iface = a.iface,
        hook = a.hook,
        program_id = a.program_id,
        adopted = a.adopted,
        "attached"
    );
}
