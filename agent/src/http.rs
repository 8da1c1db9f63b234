//! The HTTP endpoint (`--metrics ADDR`): `/metrics` for Prometheus, `/healthz` (the agent's
//! main loop answers) and `/readyz` (programs attached, as read back from the kernel, and a
//! policy in force). Every answer comes from the main loop, through the same channel as
//! control requests.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::sync::{mpsc, oneshot};

use crate::control::{
    protocol::{Request, Response},
    server::Call,
};

/// A probe that gets no answer in this time fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

async fn ask(calls: &mpsc::Sender<Call>, request: Request) -> Option<Response> {
    let (reply, answer) = oneshot::channel();
    calls
        .send(Call {
            request,
            uid: 0,
            reply,
        })
        .await
        .ok()?;
    tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .ok()?
        .ok()
}

async fn metrics(State(calls): State<mpsc::Sender<Call>>) -> impl IntoResponse {
    match ask(&calls, Request::Metrics).await {
        Some(Response {
            ok: true, result, ..
        }) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            result["text"].as_str().unwrap_or_default().to_string(),
        ),
        Some(Response { message, .. }) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            message.unwrap_or_default(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            "the agent did not answer\n".to_string(),
        ),
    }
}

async fn healthz(State(calls): State<mpsc::Sender<Call>>) -> impl IntoResponse {
    match ask(&calls, Request::Status).await {
        Some(Response { ok: true, .. }) => (StatusCode::OK, "ok\n".to_string()),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent did not answer\n".to_string(),
        ),
    }
}

async fn readyz(State(calls): State<mpsc::Sender<Call>>) -> impl IntoResponse {
    match ask(&calls, Request::Ready).await {
        Some(Response {
            ok: true, result, ..
        }) if result["ready"] == true => (StatusCode::OK, "ready\n".to_string()),
        Some(Response { result, .. }) => {
            let problems: Vec<String> = result["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", problems.join("; ")),
            )
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent did not answer\n".to_string(),
        ),
    }
}

/// Binds `addr` and serves until the task is dropped.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))
}

pub async fn serve(listener: tokio::net::TcpListener, calls: mpsc::Sender<Call>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(calls);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}
