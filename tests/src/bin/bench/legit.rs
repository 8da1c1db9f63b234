//! Legitimate traffic under attack: wrk in the client namespace measures HTTP requests per
//! second and latency to a server behind each filter, alone and during a one-source UDP
//! flood from the generator (`portcullis_tests::flood`).
//!
//! The flood comes in on its own interface (as on another NIC queue) at a fixed rate, the
//! same for every filter. Its receiving side runs inside the generator's system calls, on a
//! real-time thread: like interrupt processing, it takes the CPU it needs before the server
//! and wrk get any (at most one of the two CPUs, the generator being one thread). What a
//! filter spends per flood packet is then what the server loses.

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use axum::{Router, routing::get};
use portcullis_tests::{
    flood::{Flood, Generator, Sources, udp_frame},
    netns::{NetnsPair, SERVER_V4, SideLink, mac},
};
use serde_json::{Value, json};

use crate::{Scale, filters::Filter, flood::FLOOD_SOURCE, median};

pub const HTTP_PORT: u16 = 8080;
/// The flood's rate, the same for every filter so that what differs is the CPU each one
/// spends on it. (An unpaced generator would flood a faster filter harder.)
const FLOOD_RATE: u32 = 500_000;

/// A small HTTP server (axum) answering "ok" in the server namespace; stops on drop.
struct OkServer {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OkServer {
    fn start(pair: &NetnsPair) -> Result<Self> {
        // The socket belongs to the namespace it was created in, whichever thread serves it.
        let listener = pair.server(|| std::net::TcpListener::bind((SERVER_V4, HTTP_PORT)))?;
        listener.set_nonblocking(true)?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = Router::new().route("/", get(|| async { "ok" }));
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for OkServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What wrk measured.
pub struct Load {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// wrk from the client namespace to `path` on the server's HTTP port, with `connections`.
pub fn start_wrk(
    pair: &NetnsPair,
    duration: Duration,
    path: &str,
    connections: u32,
) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", &pair.client_ns, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg(format!("http://{SERVER_V4}:{HTTP_PORT}{path}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk")
}

/// "1.23ms", "850.00us", "1.01s" in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * scale)
}

pub fn finish_wrk(child: Child) -> Result<Load> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wrk failed: {}", portcullis_tests::output_text(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no {prefix:?} in wrk's output:\n{text}"))
    };
    Ok(Load {
        requests_per_second: field("Requests/sec:")?.parse()?,
        p50_ms: millis(field("50%")?).context("wrk's 50% latency")?,
        p99_ms: millis(field("99%")?).context("wrk's 99% latency")?,
    })
}

/// HTTP load alone, then during a flood, with `filter` installed. The flood comes in on
/// its own interface, as on another NIC queue: what it takes from the HTTP server is CPU.
fn measure(generator: &Generator, filter: Filter, scale: &Scale) -> Result<Measured> {
    let pair = NetnsPair::new()?;
    let attacker = SideLink::join(&pair)?;
    let _installed = filter.install(&pair, &[&pair.server_if, &attacker.server_if])?;
    let _server = OkServer::start(&pair)?;
    let frame = udp_frame(mac(&pair.server_ns, &attacker.server_if)?, FLOOD_SOURCE, 9)?;
    let (mut alone, mut flooded) = (Vec::new(), Vec::new());
    let (mut flood_cpu, mut flood_rate) = (Vec::new(), Vec::new());
    for _ in 0..scale.rounds {
        alone.push(finish_wrk(start_wrk(&pair, scale.http_time, "/", 16)?)?);
        let wrk = start_wrk(&pair, scale.http_time, "/", 16)?;
        // Flood for as long as wrk runs, and a little longer so that it never runs alone.
        let sent = generator.send(
            &attacker.ns,
            &attacker.iface,
            &Flood {
                frame: &frame,
                sources: Sources::One,
                frames: u64::MAX,
                limit: scale.http_time + Duration::from_millis(500),
                per_second: Some(FLOOD_RATE),
                realtime: true,
            },
        )?;
        flood_cpu.push(sent.cpu.as_secs_f64() / sent.elapsed.as_secs_f64());
        flood_rate.push(sent.frames as f64 / sent.elapsed.as_secs_f64());
        flooded.push(finish_wrk(wrk)?);
    }
    Ok(Measured {
        alone: median_load(alone),
        flooded: median_load(flooded),
        flood_cpu: median(flood_cpu),
        flood_rate: median(flood_rate),
    })
}

struct Measured {
    alone: Load,
    flooded: Load,
    /// CPUs' worth of time the flood took (1.0 = one CPU): generating it, and receiving it,
    /// which happens in the same system calls.
    flood_cpu: f64,
    /// Flood frames per second actually sent: below the target when the flood needed more
    /// than one CPU.
    flood_rate: f64,
}

/// The run with the median request rate.
fn median_load(mut loads: Vec<Load>) -> Load {
    loads.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    loads.swap_remove(loads.len() / 2)
}

pub fn run(scale: &Scale) -> Result<(String, Value)> {
    let generator = Generator::new()?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Legitimate HTTP during a one-source UDP flood ({} packets/s on another interface; wrk, 16 connections, {} s, median of {})\n\n\
         | receiving side | alone: req/s | p50 | p99 | flooded: req/s | p50 | p99 | kept | flood sent | CPU the flood took |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        FLOOD_RATE,
        scale.http_time.as_secs(),
        scale.rounds
    );
    let mut results = Vec::new();
    for filter in [
        Filter::None,
        Filter::IptablesHashlimit,
        Filter::PortcullisXdpLimit,
        Filter::PortcullisXdpDeny { events: true },
    ] {
        let Measured {
            alone,
            flooded,
            flood_cpu,
            flood_rate,
        } = measure(&generator, filter, scale)?;
        let kept = flooded.requests_per_second / alone.requests_per_second;
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms | {:.0}% | {:.0} k/s | {:.0}% of a CPU |",
            filter.label(),
            alone.requests_per_second,
            alone.p50_ms,
            alone.p99_ms,
            flooded.requests_per_second,
            flooded.p50_ms,
            flooded.p99_ms,
            kept * 100.0,
            flood_rate / 1e3,
            flood_cpu * 100.0
        );
        results.push(json!({
            "filter": filter.label(),
            "alone": {"requests_per_second": alone.requests_per_second, "p50_ms": alone.p50_ms, "p99_ms": alone.p99_ms},
            "flooded": {"requests_per_second": flooded.requests_per_second, "p50_ms": flooded.p50_ms, "p99_ms": flooded.p99_ms},
            "kept": kept,
            "flood_cpu": flood_cpu,
            "flood_packets_per_second": flood_rate,
        }));
    }
    Ok((md, Value::Array(results)))
}
