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
    cache::{self, Cached},
    format::{self, ListCopy},
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

    fn parsed(source: ListSource, text: &str, from_cache: bool) -> Self {
        let outcome = match format::parse(text) {
            Ok(copy) => Outcome::Copy {
                copy: Arc::new(copy),
                from_cache,
            },
            Err(e) => Outcome::Failed(e.to_string()),
        };
        Self::new(source, outcome)
    }

    /// The cached copy of `url`, dated when it was fetched.
    pub fn cached(url: &ListUrl, cached: Cached) -> Self {
        let mut update = Self::parsed(ListSource::Url(url.clone()), &cached.text, true);
        update.at_unix = cached.fetched_unix;
        update
    }
}

/// Reads a list file now.
pub fn read_file(path: &Path) -> Update {
    file_update(path, std::fs::read_to_string(path))
}

fn file_update(path: &Path, text: std::io::Result<String>) -> Update {
    let source = ListSource::File(path.to_path_buf());
    match text {
        Ok(text) => Update::parsed(source, &text, false),
        Err(e) => Update::new(source, Outcome::Failed(format!("cannot read: {e}"))),
    }
}

/// Reads the list files again and sends a read of each whose text (or error) changed since
/// its last read; `hashes` holds those texts' hashes. Fails when the daemon is gone.
async fn read_changed(
    paths: &HashSet<PathBuf>,
    hashes: &mut HashMap<PathBuf, u64>,
    updates: &mpsc::Sender<Update>,
) -> Result<(), ()> {
    for path in paths {
        let known = hashes.get(path).copied();
        let path = path.clone();
        // Off the runtime's threads: a list may have a million lines.
        let read = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path);
            let hash = match &text {
                Ok(text) => text_hash(text),
                Err(e) => text_hash(&e.to_string()),
            };
            let update = (known != Some(hash)).then(|| file_update(&path, text));
            (path, hash, update)
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
    let mut fetchers: HashMap<ListUrl, (Duration, JoinHandle<()>)> = HashMap::new();
    let (file_events_tx, mut file_events) = mpsc::channel::<()>(16);
    let mut files: HashMap<PathBuf, u64> = HashMap::new();
    loop {
        let lists = wanted.borrow_and_update().clone();
        let urls: HashMap<ListUrl, Duration> = lists
            .iter()
            .filter_map(|rule| match &rule.source {
                ListSource::Url(url) => Some((url.clone(), rule.refresh)),
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
        for (url, refresh) in urls {
            fetchers.entry(url.clone()).or_insert_with(|| {
                let task = fetch_every(
                    client.clone(),
                    url,
                    refresh,
                    state_dir.clone(),
                    updates.clone(),
                );
                (refresh, tokio::spawn(task))
            });
        }
        let paths: HashSet<PathBuf> = lists
            .iter()
            .filter_map(|rule| match &rule.source {
                ListSource::File(path) => Some(path.clone()),
                ListSource::Url(_) => None,
            })
            .collect();
        files.retain(|path, _| paths.contains(path));
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

fn text_hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Watches the directories of `paths`; a failure is logged (the files are still read at
/// every apply).
fn watch_dirs(paths: &HashSet<PathBuf>, events: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
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
    let dirs: HashSet<&Path> = paths.iter().filter_map(|p| p.parent()).collect();
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
    state_dir: PathBuf,
    updates: mpsc::Sender<Update>,
) {
    let source = ListSource::Url(url.clone());
    let mut validators = cache::load(&state_dir, &url).map(|c| (c.etag, c.last_modified));
    let mut retry = FIRST_RETRY;
    loop {
        let outcome = match fetch(&client, url.to_fetch(), validators.as_ref()).await {
            Ok(Fetched::NotModified) => Ok(Outcome::Unchanged),
            Ok(Fetched::Body {
                text,
                etag,
                last_modified,
            }) => match parse_aside(text).await {
                Ok((copy, text)) => {
                    let cached = Cached {
                        list: url.shown(),
                        etag: etag.clone(),
                        last_modified: last_modified.clone(),
                        fetched_unix: now_unix(),
                        text,
                    };
                    if let Err(e) = cache::save(&state_dir, &url, &cached) {
                        tracing::warn!(list = %url, error = %e, "the list's copy was not cached; a restart will wait for its fetch");
                    }
                    validators = Some((etag, last_modified));
                    Ok(Outcome::Copy {
                        copy: Arc::new(copy),
                        from_cache: false,
                    })
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
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
        let outcome = outcome.unwrap_or_else(Outcome::Failed);
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

/// Parses a fetched body off the runtime's threads; gives the text back for the cache.
async fn parse_aside(text: String) -> Result<(ListCopy, String), String> {
    tokio::task::spawn_blocking(move || {
        format::parse(&text)
            .map(|copy| (copy, text))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("parsing the list failed: {e}"))?
}

enum Fetched {
    NotModified,
    Body {
        text: String,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

type Validators = (Option<String>, Option<String>);

/// One conditional GET.
async fn fetch(
    client: &reqwest::Client,
    url: &reqwest::Url,
    validators: Option<&Validators>,
) -> Result<Fetched, String> {
    let mut request = client.get(url.clone());
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
    let etag = header_text(header::ETAG);
    let last_modified = header_text(header::LAST_MODIFIED);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the body is over {} MiB", MAX_BODY >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
    Ok(Fetched::Body {
        text,
        etag,
        last_modified,
    })
}
