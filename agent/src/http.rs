//! The HTTP endpoint (`--metrics ADDR`): `/metrics` for Prometheus, `/readyz` (programs
//! attached, as read back from the kernel, and a policy in force) and `/healthz` (the main
//! loop came round lately). All three read telemetry, never waiting on the main loop.
//!
//! The endpoint is unauthenticated and on the node's address, so it bounds what a client
//! can hold: connections per client address (more are closed at once) and in all (a new
//! connection then closes the oldest, so a probe always gets in: a scrape is over in
//! milliseconds, a connection held open to exhaust the endpoint is the oldest), the time to
//! send the request headers and their size, a connection's whole life, and how long a
//! scrape waits for the one rendering slot (then 503).

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::{Notify, Semaphore};

use crate::telemetry::Telemetry;

/// Open connections at most, and from one client address at most.
pub const MAX_CONNECTIONS: usize = 512;
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 16;
/// A client must have sent its request headers this soon after connecting (or after its
/// previous request on the connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Header bytes a request may use (hyper's read buffer bound; 8 KiB is its least).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The longest a connection lives, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a scrape waits for the rendering slot before it is shed with 503.
const METRICS_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// The main loop comes round at least every second; liveness fails when it has not for
/// this long.
pub const LIVENESS_STALL: Duration = Duration::from_secs(20);
/// Accept errors (out of file descriptors, most likely) pause accepting this long, so the
/// loop cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone)]
struct Endpoint {
    telemetry: Arc<Telemetry>,
    /// One scrape renders at a time; the others wait, bounded.
    rendering: Arc<Semaphore>,
}

/// Runs `render` on a blocking thread once `slot` is free, or gives up (`None`) when that
/// takes longer than `wait`.
async fn render_when_free<T: Send + 'static>(
    slot: &Arc<Semaphore>,
    wait: Duration,
    render: impl FnOnce() -> T + Send + 'static,
) -> Option<Result<T, tokio::task::JoinError>> {
    let permit = tokio::time::timeout(wait, slot.clone().acquire_owned())
        .await
        .ok()?
        .ok()?;
    Some(
        tokio::task::spawn_blocking(move || {
            let rendered = render();
            drop(permit);
            rendered
        })
        .await,
    )
}

async fn metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let text_plain = [("content-type", "text/plain")];
    // Reading the maps is a string of system calls: on a blocking thread.
    let telemetry = endpoint.telemetry.clone();
    let rendered = render_when_free(&endpoint.rendering, METRICS_QUEUE_TIMEOUT, move || {
        telemetry.metrics()
    })
    .await;
    match rendered {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            text_plain,
            "busy: another scrape is being answered; try again\n".to_string(),
        ),
        Some(Ok(Ok(text))) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        ),
        Some(Ok(Err(e))) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            text_plain,
            format!("reading the kernel's counters: {e}\n"),
        ),
        Some(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            text_plain,
            format!("{e}\n"),
        ),
    }
}

async fn healthz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let since = endpoint.telemetry.since_beat();
    if since < LIVENESS_STALL {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the main loop has not come round for {} s\n",
                since.as_secs()
            ),
        )
    }
}

async fn readyz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let telemetry = endpoint.telemetry.clone();
    let readiness = move || {
        let in_force = telemetry.in_force();
        let file_error = in_force.file_error.clone().map(|e| (in_force.version, e));
        (telemetry.readiness_problems(), file_error)
    };
    match tokio::task::spawn_blocking(readiness).await {
        Ok((problems, None)) if problems.is_empty() => (StatusCode::OK, "ready\n".to_string()),
        // Enforcing a good policy, which is what ready means; but say which, and why.
        Ok((problems, Some((version, error)))) if problems.is_empty() => (
            StatusCode::OK,
            format!(
                "ready, with version {version} in force: the policy file is not usable: {error}\n"
            ),
        ),
        Ok((problems, _)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// Binds `addr` for `serve`.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))
}

/// Open connections, oldest first, and how many each client address has.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: VecDeque<(u64, Arc<Notify>)>,
    by_client: HashMap<IpAddr, usize>,
}

/// A connection's place in `Connections`, given back when it ends; `closing` fires when a
/// newer connection needs the place.
struct Slot {
    connections: Arc<Mutex<Connections>>,
    id: u64,
    client: IpAddr,
    closing: Arc<Notify>,
}

impl Slot {
    /// A place for a connection from `client`, unless that client has its fill; the
    /// oldest connection is told to close if every place is taken.
    fn take(connections: &Arc<Mutex<Connections>>, client: IpAddr) -> Option<Slot> {
        let mut all = connections.lock().expect("not poisoned");
        let from_client = all.by_client.get(&client).copied().unwrap_or(0);
        if from_client >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        if all.open.len() >= MAX_CONNECTIONS
            && let Some((_, oldest)) = all.open.pop_front()
        {
            // Its slot leaves `open` now; its task ends at once and drops the rest.
            oldest.notify_one();
        }
        let id = all.next_id;
        all.next_id += 1;
        let closing = Arc::new(Notify::new());
        all.open.push_back((id, closing.clone()));
        all.by_client.insert(client, from_client + 1);
        Some(Slot {
            connections: connections.clone(),
            id,
            client,
            closing,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut all = self.connections.lock().expect("not poisoned");
        all.open.retain(|(id, _)| *id != self.id);
        if let Some(count) = all.by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                all.by_client.remove(&self.client);
            }
        }
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoint {
            telemetry,
            rendering: Arc::new(Semaphore::new(1)),
        });
    let connections = Arc::new(Mutex::new(Connections::default()));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&connections, client.ip()) else {
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            // Past its lifetime, or when a newer one needs its place, a connection is
            // dropped, answer or not.
            tokio::select! {
                _ = connection => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                _ = slot.closing.notified() => {}
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape that waits longer than its bound for a slow one is turned away, and the
    /// next one after the slow one ends is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_queued_behind_a_slow_one_is_shed() {
        let slot = Arc::new(Semaphore::new(1));
        let slow = {
            let slot = slot.clone();
            tokio::spawn(async move {
                render_when_free(&slot, Duration::from_secs(5), || {
                    std::thread::sleep(Duration::from_millis(600));
                    "slow"
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let queued = render_when_free(&slot, Duration::from_millis(200), || "queued").await;
        assert!(queued.is_none(), "a scrape waited past its bound");
        assert_eq!(slow.await.unwrap().unwrap().unwrap(), "slow");
        let next = render_when_free(&slot, Duration::from_millis(200), || "next").await;
        assert_eq!(next.unwrap().unwrap(), "next");
    }
}
