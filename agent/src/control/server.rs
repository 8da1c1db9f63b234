//! The agent's side of the control socket. Connections are served on their own tasks; each
//! request goes to the agent's main loop as a `Call` and the answer comes back on a oneshot.
//! Events are streamed from a broadcast channel without involving the main loop.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};

use super::protocol::{ErrorKind, Request, Response};

/// A request from a connection, with the caller's uid, and where to send the answer.
pub struct Call {
    pub request: Request,
    pub uid: u32,
    pub reply: oneshot::Sender<Response>,
}

/// The listening socket; the socket file is removed when this drops.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

/// Largest request accepted: a policy of a million CIDRs is about 20 MB of text.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

impl Server {
    /// Listens on `path` with mode 0600. A socket file left by an agent that is gone is
    /// replaced; one that answers belongs to a running agent and is an error.
    pub async fn bind(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                bail!("another agent is listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self, calls: mpsc::Sender<Call>, events: broadcast::Sender<String>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            };
            let (calls, events) = (calls.clone(), events.clone());
            tokio::spawn(async move {
                if let Err(e) = connection(stream, calls, events).await {
                    tracing::debug!(error = format!("{e:#}"), "control connection ended");
                }
            });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
) -> Result<()> {
    let mut line = String::new();
    {
        // The client sends one line and then waits, so reading ahead cannot swallow more.
        // The line is read before the credentials are checked so that a refused client gets
        // the refusal instead of a reset connection.
        let mut reader = BufReader::new((&mut stream).take(MAX_REQUEST_BYTES as u64));
        reader.read_line(&mut line).await?;
    }
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
    let request = match serde_json::from_str::<Request>(&line) {
        Ok(request) => request,
        Err(e) => {
            let response = Response::error(ErrorKind::BadRequest, format!("bad request: {e}"));
            return reply(&mut stream, &response).await;
        }
    };
    if request == Request::Events {
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
