//! The agent's side of the control socket. Connections are served on their own tasks; each
//! request goes to the agent's main loop as a `Call` and the answer comes back on a oneshot.
//! Events are streamed from a broadcast channel without involving the main loop.
//!
//! Who is trusted: root, and the agent's own user. The socket is 0600 in a directory no
//! other user can write to, and the peer's credentials are checked again at accept, before
//! a byte is read. Any process with uid 0 on the node can control the agent, as it could
//! load or detach BPF programs itself.

use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, broadcast, mpsc, oneshot},
};

use super::protocol::{ErrorKind, Request, Response};
use crate::telemetry::Telemetry;

/// A request from a connection, with the caller's uid, and where to send the answer.
pub struct Call {
    pub request: Request,
    pub uid: u32,
    pub reply: oneshot::Sender<Response>,
}

/// The listening socket; the socket file is removed when this drops, if it is still the
/// one this agent created.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file bound, to recognise it at exit.
    identity: (u64, u64),
    connections: Arc<Semaphore>,
    streams: Arc<Semaphore>,
}

/// Largest request accepted: a policy of a million CIDRs is about 20 MB of text.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// A client has this long to send its request once connected.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once (requests and event streams); more are refused.
const MAX_CONNECTIONS: usize = 32;
/// `events --follow` streams at once, out of `MAX_CONNECTIONS`.
const MAX_EVENT_STREAMS: usize = 8;
/// After a failed accept (out of file descriptors...), wait this long before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The socket's directory must be safe to hold it: a real directory (not a link), owned by
/// root or this agent's user, and writable by nobody else unless sticky (as /tmp is), so no
/// other user can swap the socket for one of their own. A missing one is created 0700.
fn check_directory(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        bail!(
            "{} is not a directory (a link, or a file): refusing to put the control socket there",
            dir.display()
        );
    }
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != own_uid {
        bail!(
            "{} belongs to uid {}, not root: refusing to put the control socket there",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        bail!(
            "{} is writable by other users (mode {:o}): refusing to put the control socket there; make it 0700",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

impl Server {
    /// Listens on `path` with mode 0600 (created so, under umask 077: there is no moment
    /// where it is open to others). A socket file left by an agent that is gone is replaced;
    /// one that answers belongs to a running agent and is an error.
    pub async fn bind(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            check_directory(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                bail!("another agent is listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        // SAFETY: umask only swaps the process's file mode mask; nothing else creates files
        // on this thread meanwhile (the runtime is single-threaded and this is not async).
        let old_mask = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the mask.
        unsafe { libc::umask(old_mask) };
        let listener = bound.with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        })
    }

    /// Accepts connections until the task is dropped.
    /// Serves connections: `stats` is answered from `telemetry` on a blocking thread, every
    /// other request goes to the main loop through `calls`, `events` streams from `events`.
    pub async fn serve(
        &self,
        calls: mpsc::Sender<Call>,
        events: broadcast::Sender<String>,
        telemetry: Arc<Telemetry>,
    ) {
        loop {
            let mut stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let (calls, events) = (calls.clone(), events.clone());
            let streams = self.streams.clone();
            let telemetry = telemetry.clone();
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tokio::spawn(async move {
                    let busy = Response::error(
                        ErrorKind::Failed,
                        format!("busy: {MAX_CONNECTIONS} control connections are open; try again"),
                    );
                    let _ = reply(&mut stream, &busy).await;
                });
                continue;
            };
            tokio::spawn(async move {
                if let Err(e) = connection(stream, calls, events, streams, telemetry).await {
                    tracing::debug!(error = format!("{e:#}"), "control connection ended");
                }
                drop(permit);
            });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only the socket this agent bound: another agent may have taken the path since.
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn reply(stream: &mut UnixStream, response: &Response) -> Result<()> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(())
}

async fn connection(
    mut stream: UnixStream,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<String>,
    streams: Arc<Semaphore>,
    telemetry: Arc<Telemetry>,
) -> Result<()> {
    // Who is calling is known at accept: refuse before reading anything.
    let uid = stream.peer_cred()?.uid();
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    if uid != 0 && uid != own_uid {
        tracing::warn!(
            uid,
            "refused a control connection: only root may control the agent"
        );
        let message =
            format!("refused: uid {uid} is not root; the control socket is for root only");
        return reply(
            &mut stream,
            &Response::error(ErrorKind::PermissionDenied, message),
        )
        .await;
    }
    let mut line = String::new();
    {
        // The client sends one line and then waits, so reading ahead cannot swallow more.
        let mut reader = BufReader::new((&mut stream).take(MAX_REQUEST_BYTES as u64));
        match tokio::time::timeout(REQUEST_DEADLINE, reader.read_line(&mut line)).await {
            Ok(read) => {
                read?;
            }
            Err(_) => {
                let late = Response::error(
                    ErrorKind::BadRequest,
                    format!("no request within {} s", REQUEST_DEADLINE.as_secs()),
                );
                return reply(&mut stream, &late).await;
            }
        }
    }
    let request = match serde_json::from_str::<Request>(&line) {
        Ok(request) => request,
        Err(e) => {
            let response = Response::error(ErrorKind::BadRequest, format!("bad request: {e}"));
            return reply(&mut stream, &response).await;
        }
    };
    if request == Request::Stats {
        // Counters and the last census: nothing the main loop must be free for.
        let response = tokio::task::spawn_blocking(move || telemetry.stats_response())
            .await
            .unwrap_or_else(|e| Response::error(ErrorKind::Failed, e.to_string()));
        return reply(&mut stream, &response).await;
    }
    if request == Request::Events {
        let Ok(_stream_permit) = streams.try_acquire_owned() else {
            let busy = Response::error(
                ErrorKind::Failed,
                format!("busy: {MAX_EVENT_STREAMS} event streams are open; try again"),
            );
            return reply(&mut stream, &busy).await;
        };
        let mut events = events.subscribe();
        loop {
            let line = match events.recv().await {
                Ok(line) => line,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    format!("{{\"type\":\"lagged\",\"missed\":{missed}}}")
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            stream.write_all(format!("{line}\n").as_bytes()).await?;
        }
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    calls
        .send(Call {
            request,
            uid,
            reply: reply_tx,
        })
        .await
        .context("the agent is shutting down")?;
    let response = reply_rx.await.context("the agent dropped the request")?;
    reply(&mut stream, &response).await
}
