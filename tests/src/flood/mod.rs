//! A packet generator for floods over a veth pair, run in the client namespace on the
//! calling thread's CPU. A raw AF_PACKET socket sends each frame into a veth pair of the
//! generator's own; an XDP program on its other end (`portcullis_flood` in tests/ebpf)
//! redirects the frame to every entry of a device map, `FANOUT_COPIES` entries that all name
//! the client's interface, so the frame leaves there `FANOUT_COPIES` times. The server end
//! receives XDP frames, as it would from a NIC, and more of them than the benchmark's
//! ceiling program takes (its ring overflows; BENCHMARKS.md). Spoofing floods give each copy
//! its source in a program of the map's entries.
//!
//! BPF_F_TEST_XDP_LIVE_FRAMES (BPF_PROG_TEST_RUN transmitting an XDP program's frames)
//! generated the floods before; some kernel builds refuse it with EPERM. A raw socket alone
//! offers fewer frames than the receiving side takes (BENCHMARKS.md says how this was
//! measured).

mod socket;

use std::{
    net::Ipv4Addr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    netns::{NetnsPair, SERVER_V4, ip},
    test_programs::{self, FLOOD, FLOOD_SEQUENTIAL, FLOOD_SPOOFED},
};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::DevMap,
    programs::{Xdp, XdpMode, xdp::XdpLink},
};
use etherparse::PacketBuilder;
pub use portcullis_test_ebpf::FANOUT_COPIES;
use socket::PacketSocket;

/// Where the generator's frames come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sources {
    /// Every frame as given.
    One,
    /// A random source address per frame in the /12 of the frame's own (1,048,576 sources).
    Spoofed,
    /// The next address of the frame's /12 per frame: 1,048,576 one-packet sources before
    /// any source repeats.
    Sequential,
}

/// A 60-byte UDP frame (64 on a wire, with the checksum) from `source` to the server
/// address, for the interface with MAC `to` so that the server's IP stack takes it as its own.
pub fn udp_frame(to: [u8; 6], source: Ipv4Addr, dport: u16) -> Result<Vec<u8>> {
    let server: Ipv4Addr = SERVER_V4.parse()?;
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], to)
        .ipv4(source.octets(), server.octets(), 64)
        .udp(40000, dport);
    let payload = [0u8; 18];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, &payload)?;
    // No UDP checksum (optional in IPv4): the spoofing generator rewrites the source, which
    // the checksum covers, and the stack would drop every frame as corrupt.
    frame[14 + 20 + 6..14 + 20 + 8].fill(0);
    Ok(frame)
}

/// One flood: what to send and for how long.
#[derive(Clone, Copy)]
pub struct Flood<'a> {
    pub frame: &'a [u8],
    pub sources: Sources,
    /// Stop after this many frames (rounded up to whole fan-outs of `FANOUT_COPIES`), or
    /// when `limit` has passed.
    pub frames: u64,
    pub limit: Duration,
    /// Frames per second, in 50 ms chunks; `None` sends as fast as the kernel takes them.
    pub per_second: Option<u32>,
    /// Run the generator's thread as a real-time (SCHED_FIFO) thread. Without threaded NAPI
    /// on the receiving interface, the receiving side's work runs in that thread, which then
    /// preempts other work on its CPU the way interrupt processing does.
    pub realtime: bool,
}

pub struct Generator {
    /// The fan-out and its entries' programs; one flood at a time uses them.
    ebpf: Mutex<Ebpf>,
}

/// What one flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub frames: u64,
    pub elapsed: Duration,
    /// CPU time of the generator's thread: the generator itself, and the receiving side's
    /// work when that runs in the same system calls (no threaded NAPI).
    pub cpu: Duration,
}

/// A paced flood sends this much of its schedule at a time.
const PACING_CHUNK: Duration = Duration::from_millis(50);

impl Generator {
    pub fn new() -> Result<Self> {
        Ok(Self {
            ebpf: Mutex::new(test_programs::load(&[
                FLOOD,
                FLOOD_SPOOFED,
                FLOOD_SEQUENTIAL,
            ])?),
        })
    }

    /// Sends `flood` out of interface `iface` in namespace `ns`.
    pub fn send(&self, ns: &str, iface: &str, flood: &Flood) -> Result<Sent> {
        let Flood {
            frame,
            sources,
            frames,
            limit,
            per_second,
            realtime,
        } = *flood;
        let mut ebpf = self
            .ebpf
            .lock()
            .map_err(|_| anyhow!("a flood panicked while holding the generator"))?;
        let ebpf = &mut *ebpf;
        NetnsPair::run_in(ns, move || {
            if realtime {
                let param = libc::sched_param { sched_priority: 1 };
                // SAFETY: changes this thread's policy only; `param` outlives the call.
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
                    return Err(anyhow!(
                        "SCHED_FIFO for the generator: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
            let fan_out = FanOut::install(ebpf, iface, sources)?;
            let socket = PacketSocket::open(portcullis::loader::ifindex(&fan_out.entry)?)
                .with_context(|| format!("the flood generator's socket on {}", fan_out.entry))?;
            let cpu_before = thread_cpu_time();
            let started = Instant::now();
            let mut sent = 0u64;
            let copies = u64::from(FANOUT_COPIES);
            // A paced flood sends a chunk of its schedule at a time, in whole fan-outs.
            let chunk = per_second.map_or(copies, |rate| {
                ((f64::from(rate) * PACING_CHUNK.as_secs_f64()) as u64).max(copies)
            });
            while sent < frames && started.elapsed() < limit {
                if let Some(rate) = per_second {
                    // Hold the schedule: frame `sent` is due at sent / rate seconds.
                    let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let originals = (frames - sent).min(chunk).div_ceil(copies);
                for _ in 0..originals {
                    if socket.send(frame)? {
                        sent += copies;
                    } else {
                        // The fan-out's ring is full: its NAPI, deferred to ksoftirqd, needs
                        // this CPU to empty it.
                        std::thread::yield_now();
                    }
                }
            }
            Ok(Sent {
                frames: sent,
                elapsed: started.elapsed(),
                cpu: thread_cpu_time().saturating_sub(cpu_before),
            })
        })
    }
}

/// The generator's veth pair in the client namespace, with the fan-out on its far end;
/// removed (and the program detached) when dropped.
struct FanOut {
    /// Where the generator's socket sends.
    entry: String,
    _link: XdpLink,
}

impl FanOut {
    /// Creates the generator's veth pair next to `iface` (in the calling thread's namespace),
    /// points every entry of the device map at `iface` with the entry program `sources` needs,
    /// and attaches the fan-out.
    fn install(ebpf: &mut Ebpf, iface: &str, sources: Sources) -> Result<Self> {
        // Interface names are limited to 15 characters.
        if iface.len() > 13 {
            bail!("interface name {iface} leaves no room for the generator's veth names");
        }
        let (entry, fan) = (format!("{iface}g0"), format!("{iface}g1"));
        ip(&["link", "add", &entry, "type", "veth", "peer", "name", &fan])?;
        let fan_out = Self::attach(ebpf, iface, sources, &entry, &fan);
        if fan_out.is_err() {
            let _ = ip(&["link", "del", &entry]);
        }
        fan_out
    }

    fn attach(
        ebpf: &mut Ebpf,
        iface: &str,
        sources: Sources,
        entry: &str,
        fan: &str,
    ) -> Result<Self> {
        ip(&["link", "set", entry, "up"])?;
        ip(&["link", "set", fan, "up"])?;
        let target = portcullis::loader::ifindex(iface)?;
        let entry_program = match sources {
            Sources::One => None,
            Sources::Spoofed => Some(FLOOD_SPOOFED),
            Sources::Sequential => Some(FLOOD_SEQUENTIAL),
        };
        let entry_program = entry_program
            .map(|name| -> Result<_> {
                let program: &Xdp = ebpf
                    .program(name)
                    .with_context(|| format!("no program {name}"))?
                    .try_into()?;
                Ok(program.fd()?.try_clone()?)
            })
            .transpose()?;
        let mut map: DevMap<_> = ebpf
            .map_mut("FANOUT")
            .context("no FANOUT map in the test programs")?
            .try_into()?;
        for index in 0..FANOUT_COPIES {
            map.set(index, target, entry_program.as_ref(), 0)
                .with_context(|| format!("FANOUT entry {index} to {iface}"))?;
        }
        let program: &mut Xdp = ebpf
            .program_mut(FLOOD)
            .with_context(|| format!("no program {FLOOD}"))?
            .try_into()?;
        let id = program
            .attach(fan, XdpMode::Driver)
            .with_context(|| format!("attaching the flood fan-out to {fan}"))?;
        Ok(Self {
            entry: entry.to_string(),
            _link: program.take_link(id)?,
        })
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        // Deleting one end deletes the pair. The namespace may be gone already when the
        // flood failed because it was.
        let _ = ip(&["link", "del", &self.entry]);
    }
}

/// CPU time the calling thread has used (user and system).
fn thread_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}
