//! Real traffic between the namespaces: UDP bursts and counters, TCP connects from chosen
//! source addresses, and HTTP requests to a real server. Every generator is bounded in
//! packet count and time.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::NetnsPair;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("test address"), port)
}

/// A UDP socket bound in the server namespace, read on its own thread from the start so
/// that a burst never overflows the socket buffer: what is counted is what the filter let
/// through.
pub struct UdpCounter {
    received: Arc<AtomicU64>,
    last_arrival: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl UdpCounter {
    pub fn bind(pair: &NetnsPair, ip: &str, port: u16) -> Result<Self> {
        Self::bind_in(&pair.server_ns, ip, port)
    }

    /// As `bind`, in namespace `ns`.
    pub fn bind_in(ns: &str, ip: &str, port: u16) -> Result<Self> {
        let socket = NetnsPair::run_in(ns, || UdpSocket::bind(addr(ip, port)))?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let received = Arc::new(AtomicU64::new(0));
        let last_arrival = Arc::new(Mutex::new(Instant::now()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (received, last_arrival, stop) =
                (received.clone(), last_arrival.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv_from(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                        *last_arrival.lock().unwrap() = Instant::now();
                    }
                }
            })
        };
        Ok(Self {
            received,
            last_arrival,
            stop,
            reader: Some(reader),
        })
    }

    /// When the last datagram arrived (or when the counter was bound, if none has).
    pub fn last_arrival(&self) -> Instant {
        *self.last_arrival.lock().unwrap()
    }

    /// Waits until nothing has arrived for `quiet` since the later of this call and the
    /// last arrival (at most `max`), then returns the total count.
    pub fn count(&self, quiet: Duration, max: Duration) -> u64 {
        let start = Instant::now();
        while start.elapsed() < max {
            let last = (*self.last_arrival.lock().unwrap()).max(start);
            if last.elapsed() >= quiet {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A datagram from the client to the server every few milliseconds, on a thread of its
/// own, counted on arrival: to time when a source is cut off or let through again. Bounded:
/// it stops after `PROBE_LIMIT` or when dropped.
pub struct Probe {
    counter: UdpCounter,
    stop: Arc<AtomicBool>,
    sender: Option<std::thread::JoinHandle<()>>,
}

/// A probe sends one datagram this often...
pub const PROBE_GAP: Duration = Duration::from_millis(5);
/// ...for at most this long.
const PROBE_LIMIT: Duration = Duration::from_secs(120);

impl Probe {
    /// Probes `dst:port` from `src` (addresses of the pair's client and server sides).
    pub fn start(pair: &NetnsPair, src: &str, dst: &str, port: u16) -> Result<Self> {
        Self::between(&pair.client_ns, src, &pair.server_ns, dst, port)
    }

    /// Probes `dst:port` in namespace `dst_ns` from `src` in namespace `src_ns`.
    pub fn between(src_ns: &str, src: &str, dst_ns: &str, dst: &str, port: u16) -> Result<Self> {
        let counter = UdpCounter::bind_in(dst_ns, dst, port)?;
        let socket = NetnsPair::run_in(src_ns, || UdpSocket::bind(addr(src, 0)))?;
        let target = addr(dst, port);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < PROBE_LIMIT {
                    let _ = socket.send_to(b"probe", target);
                    std::thread::sleep(PROBE_GAP);
                }
            })
        };
        Ok(Self {
            counter,
            stop,
            sender: Some(sender),
        })
    }

    /// Waits until a datagram sent after `since` arrives (the source is let through): the
    /// time from `since` to its arrival.
    pub fn wait_through(&self, since: Instant, max: Duration) -> Result<Duration> {
        while since.elapsed() < max {
            let last = self.counter.last_arrival();
            // A datagram in flight when `since` was taken may land just after it.
            if last > since + PROBE_GAP * 2 {
                return Ok(last - since);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("the probe did not get through within {max:?}")
    }

    /// Waits until nothing has arrived for 500 ms (the source is cut off): the time from
    /// `since` to the last arrival (zero if none arrived after it).
    pub fn wait_blocked(&self, since: Instant, max: Duration) -> Result<Duration> {
        let quiet = Duration::from_millis(500);
        while since.elapsed() < max + quiet {
            let last = self.counter.last_arrival();
            if last.elapsed() >= quiet {
                return Ok(last.saturating_duration_since(since));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("the probe still got through {max:?} after")
    }

    /// Whether anything arrived during the last `window`.
    pub fn arriving(&self, window: Duration) -> bool {
        std::thread::sleep(window);
        self.counter.last_arrival().elapsed() < window
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
    }
}

/// Sends `count` UDP datagrams from `src` to `dst:port` in the client namespace, at most
/// one every `gap` (zero: as fast as the socket allows). Returns how many were sent.
pub fn udp_send(
    pair: &NetnsPair,
    src: &str,
    dst: &str,
    port: u16,
    count: u64,
    gap: Duration,
) -> Result<u64> {
    udp_send_in(&pair.client_ns, src, dst, port, count, gap)
}

/// As `udp_send`, from namespace `ns`.
pub fn udp_send_in(
    ns: &str,
    src: &str,
    dst: &str,
    port: u16,
    count: u64,
    gap: Duration,
) -> Result<u64> {
    let socket = NetnsPair::run_in(ns, || UdpSocket::bind(addr(src, 0)))?;
    let target = addr(dst, port);
    let payload = [0x5au8; 32];
    let mut sent = 0;
    for _ in 0..count {
        // A full socket buffer under a flood is expected; count only what left.
        if socket.send_to(&payload, target).is_ok() {
            sent += 1;
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    Ok(sent)
}

/// A TCP listener in the server namespace that accepts and answers "ok" in the background.
pub fn tcp_server(pair: &NetnsPair, ip: &str, port: u16) -> Result<()> {
    let listener = pair.server(|| TcpListener::bind(addr(ip, port)))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.write_all(b"ok");
        }
    });
    Ok(())
}

/// A TCP connection from `src` (in the client namespace) to `dst:port`, or `None` if it
/// was not established within `timeout`. Reads time out after `timeout` too.
pub fn connect_from(
    pair: &NetnsPair,
    src: &str,
    dst: &str,
    port: u16,
    timeout: Duration,
) -> Option<TcpStream> {
    let src = addr(src, 0);
    let target = addr(dst, port);
    let socket = pair
        .client(|| {
            let domain = if src.is_ipv4() {
                Domain::IPV4
            } else {
                Domain::IPV6
            };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            socket.bind(&src.into())?;
            Ok::<_, std::io::Error>(socket)
        })
        .ok()?;
    socket.connect_timeout(&target.into(), timeout).ok()?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout)).ok()?;
    Some(stream)
}

/// Connects from `src` to `dst:port` and reads the greeting; true if the server answered
/// within `timeout`.
pub fn tcp_connects(pair: &NetnsPair, src: &str, dst: &str, port: u16, timeout: Duration) -> bool {
    let Some(mut stream) = connect_from(pair, src, dst, port, timeout) else {
        return false;
    };
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).is_ok() && &buf == b"ok"
}

/// Retries `tcp_connects` until its answer is `reachable` or `within` has passed; true if
/// it came. For changes in force a little after the call that made them (a file watch, the
/// deferred release of a detached link).
pub fn tcp_reachable_within(
    pair: &NetnsPair,
    src: &str,
    dst: &str,
    port: u16,
    reachable: bool,
    within: Duration,
) -> bool {
    let started = Instant::now();
    loop {
        if tcp_connects(pair, src, dst, port, Duration::from_millis(300)) == reachable {
            return true;
        }
        if started.elapsed() >= within {
            return false;
        }
    }
}

/// A real HTTP server (Python's http.server) in the server namespace; killed on drop.
pub struct HttpServer {
    child: Child,
}

/// The API `apps/login_app.py` serves: a login that answers 401 to wrong passwords.
pub const LOGIN_APP: &str = include_str!("../apps/login_app.py");

impl HttpServer {
    /// Python's `http.server` serving the temporary directory on `ip`:`port`.
    pub fn start(pair: &NetnsPair, ip: &str, port: u16) -> Result<Self> {
        let port_arg = port.to_string();
        let args = ["-m", "http.server", "--bind", ip, &port_arg];
        Self::spawn(pair, &args, ip, port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `LOGIN_APP` on `ip`:`port`.
    pub fn start_login_app(pair: &NetnsPair, ip: &str, port: u16) -> Result<Self> {
        Self::spawn(pair, &["-c", LOGIN_APP, ip, &port.to_string()], ip, port)
    }

    fn spawn(pair: &NetnsPair, args: &[&str], ip: &str, port: u16) -> Result<Self> {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", pair.server_ns))
            .arg("python3")
            .args(args)
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a python3 HTTP server")?;
        let server = Self { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let target = addr(ip, port);
        while Instant::now() < deadline {
            let up = NetnsPair::run_in(&pair.server_ns, || {
                std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
            });
            if up {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the python3 HTTP server did not start listening on {target}")
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET / from `src`; the HTTP status code, or `None` if no answer came within `timeout`.
pub fn http_get(
    pair: &NetnsPair,
    src: &str,
    dst: &str,
    port: u16,
    timeout: Duration,
) -> Option<u16> {
    let mut stream = connect_from(pair, src, dst, port, timeout)?;
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// What an HTTP request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A response with this status code.
    Status(u16),
    /// The connection was reset.
    Reset,
    /// No connection, or no answer within the time allowed.
    Nothing,
}

/// An HTTP/1.1 keep-alive connection from a chosen source address of the client
/// namespace: requests one after the other, each answer read in full (by Content-Length).
pub struct KeepAlive {
    stream: Option<TcpStream>,
}

impl KeepAlive {
    pub fn connect(pair: &NetnsPair, src: &str, dst: &str, port: u16, timeout: Duration) -> Self {
        Self {
            stream: connect_from(pair, src, dst, port, timeout),
        }
    }

    /// Sends `method path` with `form` as a urlencoded body (if any) and reads the answer.
    /// After a reset or silence the connection is gone: later requests get `Nothing`.
    pub fn request(&mut self, method: &str, path: &str, form: Option<&str>) -> Answer {
        let body = form.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(&[request.as_bytes()])
    }

    /// Sends `parts` as they are, each in a segment of its own (Nagle off, a pause
    /// between them), and reads the answer.
    pub fn send(&mut self, parts: &[&[u8]]) -> Answer {
        let Some(stream) = self.stream.as_mut() else {
            return Answer::Nothing;
        };
        let _ = stream.set_nodelay(true);
        let mut sent = Ok(());
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
            sent = stream.write_all(part);
            if sent.is_err() {
                break;
            }
        }
        let answer = match sent {
            Ok(()) => read_answer(stream),
            Err(e) => Err(e),
        };
        match answer {
            Ok(status) => Answer::Status(status),
            Err(e) => {
                self.stream = None;
                if e.kind() == std::io::ErrorKind::ConnectionReset {
                    Answer::Reset
                } else {
                    Answer::Nothing
                }
            }
        }
    }
}

/// Reads one response with a Content-Length body; its status code.
fn read_answer(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                return status.ok_or_else(|| std::io::ErrorKind::InvalidData.into());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a connection of its own (see `KeepAlive::request`).
pub fn http_request(
    pair: &NetnsPair,
    src: &str,
    dst: &str,
    port: u16,
    (method, path, form): (&str, &str, Option<&str>),
    timeout: Duration,
) -> Answer {
    KeepAlive::connect(pair, src, dst, port, timeout).request(method, path, form)
}

/// GET `path` from `addr` inside namespace `ns`: the status code and the body.
pub fn http_fetch(ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    let target: SocketAddr = addr.parse().expect("test address");
    let mut stream = NetnsPair::run_in(ns, || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2))
    })
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Sends `frame` as it is out of interface `iface` of the client namespace, through a
/// packet socket. A frame of a page or more leaves as a non-linear skb with only the
/// Ethernet header in its linear part (net/packet/af_packet.c, `packet_alloc_skb`), which
/// is how large packets reach a TC program from real NICs too.
pub fn send_raw_frame(pair: &NetnsPair, iface: &str, frame: &[u8]) -> Result<()> {
    pair.client(|| -> Result<()> {
        let ifindex = portcullis::loader::ifindex(iface)?;
        // SAFETY: plain socket call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a packet socket");
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: all zeroes is a valid sockaddr_ll; the fields that matter are set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: a valid buffer and address of the stated lengths.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent != frame.len() as isize {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending a {}-byte frame on {iface}", frame.len()));
        }
        Ok(())
    })
}
