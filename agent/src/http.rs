//! The HTTP endpoint (`--metrics ADDR`): `/metrics` for Prometheus and `/readyz` (programs
//! attached, as read back from the kernel, and a policy in force) read telemetry directly,
//! so a busy main loop cannot hold a scrape or a probe; `/healthz` asks the main loop, since
//! its answering is what liveness means.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::sync::{mpsc, oneshot};

use crate::{
    control::{
        protocol::{Request, Response},
        server::Call,
    },
    telemetry::Telemetry,
};

/// A liveness probe that gets no answer from the main loop in this time fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct Endpoint {
    calls: mpsc::Sender<Call>,
    telemetry: Arc<Telemetry>,
}

async fn metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    // Reading the maps is a string of system calls: off the event loop.
    let telemetry = endpoint.telemetry.clone();
    match tokio::task::spawn_blocking(move || telemetry.metrics()).await {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        ),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            format!("reading the kernel's counters: {e}\n"),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            format!("{e}\n"),
        ),
    }
}

async fn healthz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let (reply, answer) = oneshot::channel();
    let call = Call {
        request: Request::Status,
        uid: 0,
        reply,
    };
    let answered = async {
        endpoint.calls.send(call).await.ok()?;
        tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .ok()?
            .ok()
    };
    match answered.await {
        Some(Response { ok: true, .. }) => (StatusCode::OK, "ok\n".to_string()),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent did not answer\n".to_string(),
        ),
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

/// Binds `addr` and serves until the task is dropped.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    calls: mpsc::Sender<Call>,
    telemetry: Arc<Telemetry>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoint { calls, telemetry });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}
