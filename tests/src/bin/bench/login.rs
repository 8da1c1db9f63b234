//! A login flood against a small API, side by side: nothing in front of it, NGINX's
//! `limit_req` (Debian's nginx as a reverse proxy) and Portcullis's route, both enforcing
//! the same per-address limit on `POST /api/login`. Many attacking addresses guess
//! passwords as fast as they get answers while wrk reads `GET /api/items` as a legitimate
//! client. Measured: the attempts that reach the application, the CPU the application (and
//! the proxy) spend, and the legitimate client's rate and p99.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portcullis_tests::{
    agent::Agent,
    netns::{NetnsPair, SERVER_V4},
    nginx::Nginx,
    traffic::{HttpServer, http_fetch},
};
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    Scale,
    legit::{HTTP_PORT, finish_wrk, start_wrk},
    median,
};

/// The limit both filters enforce, per client address.
const RATE_PER_SECOND: u32 = 5;
const BURST: u32 = 5;
/// Attacking addresses, each a thread guessing on a new connection after each answer.
const ATTACKERS: u8 = 32;
/// Where the application listens behind NGINX.
const APP_BEHIND_PROXY: u16 = 9000;

#[derive(Clone, Copy, PartialEq)]
enum Front {
    Nothing,
    Nginx,
    Portcullis,
}

impl Front {
    fn label(self) -> &'static str {
        match self {
            Front::Nothing => "nothing (the application alone)",
            Front::Nginx => "NGINX limit_req (reverse proxy)",
            Front::Portcullis => "Portcullis route (XDP)",
        }
    }
}

/// nginx in the server namespace with `limit_req` on the login; stopped on drop.
fn start_nginx(pair: &NetnsPair) -> Result<Nginx> {
    let nginx = Nginx::start(&pair.server_ns, nginx_conf)?;
    wait_for_http(pair, HTTP_PORT)?;
    Ok(nginx)
}

/// The CPU time of nginx's processes (master and workers), in seconds.
fn nginx_cpu_seconds(nginx: &Nginx) -> f64 {
    let master = nginx.pid();
    let mut total = process_cpu_seconds(master);
    for worker in children_of(master) {
        total += process_cpu_seconds(worker);
    }
    total
}

fn nginx_conf(prefix: &Path) -> String {
    let p = prefix.display();
    // NGINX's burst counts requests beyond the first: `burst=4` admits 5 at once, as a
    // Portcullis burst of 5 does.
    let nginx_burst = BURST - 1;
    format!(
        "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi;\n\
         uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
         limit_req_zone $binary_remote_addr zone=login:10m rate={RATE_PER_SECOND}r/s;\n\
         upstream app {{ server 127.0.0.1:{APP_BEHIND_PROXY}; keepalive 32; }}\n\
         server {{\n\
         listen {HTTP_PORT};\n\
         location = /api/login {{ limit_req zone=login burst={nginx_burst} nodelay; proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
         location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
         }}\n}}\n"
    )
}

fn portcullis_policy() -> String {
    format!(
        "http:\n  ports: [{HTTP_PORT}]\n  routes:\n    - {{name: login, methods: [POST], path: /api/login, rate: {RATE_PER_SECOND}/s, burst: {BURST}}}\n"
    )
}

fn wait_for_http(pair: &NetnsPair, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = format!("{SERVER_V4}:{port}");
    while Instant::now() < deadline {
        if http_fetch(&pair.client_ns, &addr, "/api/items").is_some_and(|(s, _)| s == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing answered on {addr}")
}

/// utime + stime of process `pid`, in seconds.
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which ends with the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// What the attackers got, summed over all of them.
#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// One attacker: from `source`, a new connection per guess, until `until`.
fn attack(server: SocketAddr, source: SocketAddr, until: Instant, tally: &Tally) {
    let request = "POST /api/login HTTP/1.1\r\nHost: api\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 25\r\nConnection: close\r\n\r\nuser=admin&password=guess";
    while Instant::now() < until {
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        let status = (|| -> std::io::Result<u16> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.bind(&source.into())?;
            socket.connect_timeout(&server.into(), Duration::from_secs(1))?;
            let mut stream: TcpStream = socket.into();
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            stream.write_all(request.as_bytes())?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head)?;
            let text = String::from_utf8_lossy(&head[9..12]).into_owned();
            text.parse()
                .map_err(|_| std::io::ErrorKind::InvalidData.into())
        })();
        match status {
            Ok(401) => tally.answered.fetch_add(1, Ordering::Relaxed),
            // NGINX's refusal (503, limit_req's default status).
            Ok(_) => tally.refused.fetch_add(1, Ordering::Relaxed),
            // Portcullis's refusal is a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                tally.refused.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The login count the application reports.
fn logins_reached(pair: &NetnsPair, app_port: u16) -> Result<u64> {
    let (status, body) = http_fetch(&pair.server_ns, &format!("127.0.0.1:{app_port}"), "/_count")
        .context("asking the application for its count")?;
    if status != 200 {
        bail!("the application's count answered {status}");
    }
    Ok(body.trim().parse()?)
}

struct Round {
    attempts: u64,
    reached: u64,
    refused: u64,
    failed: u64,
    app_cpu: f64,
    proxy_cpu: f64,
    legit_rps: f64,
    legit_p99_ms: f64,
}

fn round(front: Front, duration: Duration) -> Result<Round> {
    let pair = NetnsPair::new()?;
    let lo = Command::new("ip")
        .args(["-n", &pair.server_ns, "link", "set", "lo", "up"])
        .status()?;
    if !lo.success() {
        bail!("bringing lo up in the server namespace");
    }
    let sources: Vec<String> = (0..ATTACKERS)
        .map(|i| format!("10.77.0.{}", 100 + i))
        .collect();
    for source in &sources {
        pair.add_client_addr(source)?;
    }
    let app_port = if front == Front::Nginx {
        APP_BEHIND_PROXY
    } else {
        HTTP_PORT
    };
    let app_addr = if front == Front::Nginx {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let app = HttpServer::start_login_app(&pair, app_addr, app_port)?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, portcullis_policy())?;
    let _agent = match front {
        Front::Portcullis => Some(Agent::start(
            &pair.server_ns,
            &pair.server_if,
            &policy,
            &[],
        )?),
        _ => None,
    };
    let nginx = match front {
        Front::Nginx => Some(start_nginx(&pair)?),
        _ => None,
    };
    wait_for_http(&pair, HTTP_PORT)?;

    let reached_before = logins_reached(&pair, app_port)?;
    let app_cpu_before = process_cpu_seconds(app.pid());
    let proxy_cpu_before = nginx.as_ref().map_or(0.0, nginx_cpu_seconds);
    let wrk = start_wrk(&pair, duration, "/api/items", 1)?;
    let started = Instant::now();
    let until = started + duration;
    let tally = Arc::new(Tally::default());
    let server: SocketAddr = format!("{SERVER_V4}:{HTTP_PORT}").parse()?;
    let attackers: Vec<_> = sources
        .iter()
        .map(|source| {
            let source: SocketAddr = format!("{source}:0").parse().expect("an address");
            let (tally, ns) = (tally.clone(), pair.client_ns.clone());
            std::thread::spawn(move || {
                NetnsPair::run_in(&ns, || attack(server, source, until, &tally));
            })
        })
        .collect();
    for attacker in attackers {
        let _ = attacker.join();
    }
    let legit = finish_wrk(wrk)?;
    let elapsed = started.elapsed().as_secs_f64();
    let app_cpu = (process_cpu_seconds(app.pid()) - app_cpu_before) / elapsed;
    let proxy_cpu = nginx
        .as_ref()
        .map_or(0.0, |n| (nginx_cpu_seconds(n) - proxy_cpu_before) / elapsed);
    let reached = logins_reached(&pair, app_port)? - reached_before;
    Ok(Round {
        attempts: tally.attempts.load(Ordering::Relaxed),
        reached,
        refused: tally.refused.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        app_cpu,
        proxy_cpu,
        legit_rps: legit.requests_per_second,
        legit_p99_ms: legit.p99_ms,
    })
}

pub fn run(scale: &Scale) -> Result<(String, Value)> {
    let duration = scale.http_time;
    let allowed = f64::from(ATTACKERS)
        * (f64::from(BURST) + f64::from(RATE_PER_SECOND) * duration.as_secs_f64());
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Login flood: NGINX limit_req and Portcullis side by side ({ATTACKERS} attacking addresses, each guessing on a new connection after every answer; limit {RATE_PER_SECOND}/s burst {BURST} per address on POST /api/login, so at most {allowed:.0} attempts may reach the application in {} s; wrk reads GET /api/items meanwhile on one connection; median of {})\n\n\
         | in front of the application | attempts | reached the application | refused | no answer | application CPU | proxy CPU | legitimate req/s | legitimate p99 |\n\
         |---|---|---|---|---|---|---|---|---|",
        duration.as_secs(),
        scale.rounds
    );
    let mut results = Vec::new();
    for front in [Front::Nothing, Front::Nginx, Front::Portcullis] {
        let mut rounds = Vec::new();
        for _ in 0..scale.rounds {
            rounds.push(round(front, duration).with_context(|| front.label())?);
        }
        let med = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let (attempts, reached, refused, failed) = (
            med(|r| r.attempts as f64),
            med(|r| r.reached as f64),
            med(|r| r.refused as f64),
            med(|r| r.failed as f64),
        );
        let (app_cpu, proxy_cpu) = (med(|r| r.app_cpu), med(|r| r.proxy_cpu));
        let (legit_rps, legit_p99) = (med(|r| r.legit_rps), med(|r| r.legit_p99_ms));
        let proxy = if front == Front::Nginx {
            format!("{:.0}% of a CPU", proxy_cpu * 100.0)
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            md,
            "| {} | {attempts:.0} | {reached:.0} | {refused:.0} | {failed:.0} | {:.0}% of a CPU | {proxy} | {legit_rps:.0} | {legit_p99:.1} ms |",
            front.label(),
            app_cpu * 100.0
        );
        results.push(json!({
            "front": front.label(),
            "attempts": attempts,
            "reached": reached,
            "refused": refused,
            "no_answer": failed,
            "application_cpu": app_cpu,
            "proxy_cpu": proxy_cpu,
            "legitimate_requests_per_second": legit_rps,
            "legitimate_p99_ms": legit_p99,
            "allowed": allowed,
        }));
    }
    Ok((md, Value::Array(results)))
}
