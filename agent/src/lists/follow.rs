//! Keeps the lists of the policy in force current: list files are watched (their
//! directories, like the policy file's) and read again when they change; URLs are fetched
//! at start and every `refresh`, with conditional requests, and a failed fetch is tried
//! again sooner (backing off up to `refresh`). Each read goes to the main loop as an
//! `Update`; the daemon decides what to apply.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use reqwest::{StatusCode, header};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    cache::{self, Meta},
    format::{EntryBound, ListCopy, Reader, Refused},
    memory,
};
use crate::{
    http_client::describe,
    policy::{ListRule, ListSource, ListUrl},
};

/// A fetch that takes longer than this failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry after a failed fetch; doubled each time, up to the list's `refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// A body above this is refused: no IP list is that large, a runaway response could be.
/// It bounds the cached copy on disk; what a list holds in memory is bounded by its
/// entries (`memory`).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// One read of one list.
#[derive(Debug)]
pub struct Update {
    pub source: ListSource,
    pub at_unix: u64,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    Copy {
        copy: Arc<ListCopy>,
        from_cache: bool,
    },
    /// The server answered 304 Not Modified.
    Unchanged,
    Failed(String),
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Update {
    fn new(source: ListSource, outcome: Outcome) -> Self {
        Self {
            source,
            at_unix: now_unix(),
            outcome,
        }
    }

    fn read(source: ListSource, copy: Result<ListCopy, Refused>, from_cache: bool) -> Self {
        let outcome = match copy {
            Ok(copy) => Outcome::Copy {
                copy: Arc::new(copy),
                from_cache,
            },
            Err(e) => Outcome::Failed(e.to_string()),
        };
        Self::new(source, outcome)
    }

    /// The cached copy of `url` as read, dated when it was fetched.
    pub fn cached(url: &ListUrl, meta: &Meta, copy: Result<ListCopy, Refused>) -> Self {
        let mut update = Self::read(ListSource::Url(url.clone()), copy, true);
        update.at_unix = meta.fetched_unix;
        update
    }
}

/// Reads a list file now.
pub fn read_file(path: &Path, bound: EntryBound) -> Update {
    read_file_hashed(path, bound).0
}

/// Reads a list file as a stream, under `bound`; with the hash of its bytes (or of its
/// error), which tells whether it changed since an earlier read.
fn read_file_hashed(path: &Path, bound: EntryBound) -> (Update, u64) {
    let source = ListSource::File(path.to_path_buf());
    let mut hasher = DefaultHasher::new();
    let read = std::fs::File::open(path)
        .and_then(|mut file| Reader::new(bound).read_all(&mut file, |bytes| hasher.write(bytes)));
    match read {
        Ok(copy) => (Update::read(source, copy, false), hasher.finish()),
        Err(e) => {
            let error = format!("cannot read: {e}");
            error.hash(&mut hasher);
            (Update::new(source, Outcome::Failed(error)), hasher.finish())
        }
    }
}

/// Reads the list files again and sends a read of each whose bytes (or error) changed
/// since its last read; `hashes` holds those hashes. Fails when the daemon is gone.
async fn read_changed(
    paths: &HashMap<PathBuf, u32>,
    hashes: &mut HashMap<PathBuf, u64>,
    updates: &mpsc::Sender<Update>,
) -> Result<(), ()> {
    for (path, &capacity_cidrs) in paths {
        let known = hashes.get(path).copied();
        let path = path.clone();
        // Off the runtime's threads: a list may have a million lines.
        let read = tokio::task::spawn_blocking(move || {
            let (update, hash) = read_file_hashed(&path, memory::entry_bound(capacity_cidrs));
            (path, hash, (known != Some(hash)).then_some(update))
        })
        .await;
        let Ok((path, hash, update)) = read else {
            continue;
        };
        hashes.insert(path, hash);
        if let Some(update) = update {
            updates.send(update).await.map_err(|_| ())?;
        }
    }
    Ok(())
}

/// Runs until the agent stops: follows the lists `wanted` names, sending every read to
/// `updates`.
pub async fn follow(
    mut wanted: watch::Receiver<Vec<ListRule>>,
    updates: mpsc::Sender<Update>,
    state_dir: PathBuf,
) {
    let client = match reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: list URLs are not fetched");
            return;
        }
    };
    let mut fetchers: HashMap<ListUrl, ((Duration, u32), JoinHandle<()>)> = HashMap::new();
    let (file_events_tx, mut file_events) = mpsc::channel::<()>(16);
    let mut files: HashMap<PathBuf, u64> = HashMap::new();
    loop {
        let lists = wanted.borrow_and_update().clone();
        let urls: HashMap<ListUrl, (Duration, u32)> = lists
            .iter()
            .filter_map(|rule| match &rule.source {
                ListSource::Url(url) => Some((url.clone(), (rule.refresh, rule.capacity_cidrs))),
                ListSource::File(_) => None,
            })
            .collect();
        fetchers.retain(|url, (refresh, task)| {
            let keep = urls.get(url) == Some(refresh);
            if !keep {
                task.abort();
            }
            keep
        });
        for (url, (refresh, capacity_cidrs)) in urls {
            fetchers.entry(url.clone()).or_insert_with(|| {
                let task = fetch_every(
                    client.clone(),
                    url,
                    refresh,
                    capacity_cidrs,
                    state_dir.clone(),
                    updates.clone(),
                );
                ((refresh, capacity_cidrs), tokio::spawn(task))
            });
        }
        let paths: HashMap<PathBuf, u32> = lists
            .iter()
            .filter_map(|rule| match &rule.source {
                ListSource::File(path) => Some((path.clone(), rule.capacity_cidrs)),
                ListSource::Url(_) => None,
            })
            .collect();
        files.retain(|path, _| paths.contains_key(path));
        // Lives until the lists change, when it is replaced.
        let _watcher = watch_dirs(&paths, file_events_tx.clone());
        // What changed between the daemon's read and the watch's start is seen now.
        if read_changed(&paths, &mut files, &updates).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        for (_, (_, task)) in fetchers {
                            task.abort();
                        }
                        return;
                    }
                    break;
                }
                Some(()) = file_events.recv() => {
                    // One save is a burst of events: let it settle.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while file_events.try_recv().is_ok() {}
                    if read_changed(&paths, &mut files, &updates).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Watches the directories of `paths`; a failure is logged (the files are still read at
/// every apply).
fn watch_dirs(
    paths: &HashMap<PathBuf, u32>,
    events: mpsc::Sender<()>,
) -> Option<RecommendedWatcher> {
    if paths.is_empty() {
        return None;
    }
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| crate::watch::is_change(&e)) {
                let _ = events.try_send(());
            }
        }) {
            Ok(watcher) => watcher,
            Err(e) => {
                tracing::error!(error = %e, "list files are not watched");
                return None;
            }
        };
    let dirs: HashSet<&Path> = paths.keys().filter_map(|p| p.parent()).collect();
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %e, "a list file's directory is not watched");
        }
    }
    Some(watcher)
}

/// Fetches `url` now and every `refresh`, sooner after a failure.
async fn fetch_every(
    client: reqwest::Client,
    url: ListUrl,
    refresh: Duration,
    capacity_cidrs: u32,
    state_dir: PathBuf,
    updates: mpsc::Sender<Update>,
) {
    let source = ListSource::Url(url.clone());
    let mut validators = cache::meta(&state_dir, &url).map(|m| (m.etag, m.last_modified));
    let mut retry = FIRST_RETRY;
    loop {
        let bound = memory::entry_bound(capacity_cidrs);
        let outcome = fetch(&client, &url, validators.as_ref(), bound, &state_dir).await;
        let wait = match &outcome {
            Ok(_) => {
                retry = FIRST_RETRY;
                refresh
            }
            Err(_) => {
                let wait = retry.min(refresh);
                retry = (retry * 2).min(refresh);
                wait
            }
        };
        let outcome = match outcome {
            Ok(Fetched::NotModified) => Outcome::Unchanged,
            Ok(Fetched::Copy { copy, meta }) => {
                validators = Some((meta.etag, meta.last_modified));
                Outcome::Copy {
                    copy: Arc::new(copy),
                    from_cache: false,
                }
            }
            Err(e) => Outcome::Failed(e),
        };
        if updates
            .send(Update::new(source.clone(), outcome))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

enum Fetched {
    NotModified,
    Copy { copy: ListCopy, meta: Meta },
}

type Validators = (Option<String>, Option<String>);

/// One conditional GET. The body is read as it arrives, under `bound`, and written to the
/// cache beside; the cached copy is replaced only by a body that is a list.
async fn fetch(
    client: &reqwest::Client,
    url: &ListUrl,
    validators: Option<&Validators>,
    bound: EntryBound,
    state_dir: &Path,
) -> Result<Fetched, String> {
    let mut request = client.get(url.to_fetch().clone());
    if let Some((etag, last_modified)) = validators {
        if let Some(etag) = etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(last_modified) = last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, last_modified);
        }
    }
    let mut response = request.send().await.map_err(describe)?;
    match response.status() {
        StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
        StatusCode::OK => {}
        status => return Err(format!("HTTP {status}")),
    }
    let header_text = |name: header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let meta = Meta {
        list: url.shown(),
        etag: header_text(header::ETAG),
        last_modified: header_text(header::LAST_MODIFIED),
        fetched_unix: now_unix(),
        text: None,
    };
    let mut cached = match cache::Writer::create(state_dir, url, &meta) {
        Ok(writer) => Some(writer),
        Err(e) => {
            tracing::warn!(list = %url, error = %e, "the list's copy is not cached; a restart will wait for its fetch");
            None
        }
    };
    let mut reader = Reader::new(bound);
    let mut size = 0;
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        size += chunk.len();
        if size > MAX_BODY {
            return Err(format!("the body is over {} MiB", MAX_BODY >> 20));
        }
        reader.feed(&chunk).map_err(|e| e.to_string())?;
        if let Some(writer) = &mut cached
            && let Err(e) = writer.write(&chunk)
        {
            tracing::warn!(list = %url, error = %e, "the list's copy is not cached; a restart will wait for its fetch");
            cached = None;
        }
    }
    let copy = reader.finish().map_err(|e| e.to_string())?;
    if let Some(writer) = cached
        && let Err(e) = writer.commit()
    {
        tracing::warn!(list = %url, error = %e, "the list's copy is not cached; a restart will wait for its fetch");
    }
    Ok(Fetched::Copy { copy, meta })
}
