//! A packet generator for floods over a veth pair: an XDP program run with
//! BPF_F_TEST_XDP_LIVE_FRAMES on the client end sends each frame out of that interface, so
//! the server end receives it as it would from a NIC, millions of frames per second.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::{
    netns::{NetnsPair, SERVER_V4},
    test_programs::{self, FLOOD, FLOOD_SEQUENTIAL, FLOOD_SPOOFED},
};
use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;

/// Frames handed to the kernel per batch: the kernel's own default for live frames.
const BATCH: u32 = 64;
/// At most this many frames per test run, so that a time limit is kept to within ~20 ms.
const FRAMES_PER_RUN: u32 = 100_000;

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
    /// Stop after this many frames, or when `limit` has passed.
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
    ebpf: Ebpf,
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

/// Each live-frames test run costs about 16 ms of setup and teardown here, so a paced
/// flood sends in chunks this long.
const PACING_CHUNK: Duration = Duration::from_millis(50);

impl Generator {
    pub fn new() -> Result<Self> {
        Ok(Self {
            ebpf: test_programs::load(&[FLOOD, FLOOD_SPOOFED, FLOOD_SEQUENTIAL])?,
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
        let name = match sources {
            Sources::One => FLOOD,
            Sources::Spoofed => FLOOD_SPOOFED,
            Sources::Sequential => FLOOD_SEQUENTIAL,
        };
        let program: &Xdp = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
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
            let cpu_before = thread_cpu_time();
            let ifindex = portcullis::loader::ifindex(iface)?;
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex. The kernel wants data and data_meta 0, data_end the frame length.
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let started = Instant::now();
            let mut sent = 0u64;
            let chunk = per_second.map_or(FRAMES_PER_RUN, |rate| {
                ((f64::from(rate) * PACING_CHUNK.as_secs_f64()) as u32).max(1)
            });
            while sent < frames && started.elapsed() < limit {
                if let Some(rate) = per_second {
                    // Hold the schedule: frame `sent` is due at sent / rate seconds.
                    let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let repeat = (frames - sent).min(u64::from(chunk)) as u32;
                program
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat,
                        attrs: TestRunAttrs::default().xdp_live_frames(BATCH),
                        ..Default::default()
                    })
                    .map_err(|e| anyhow!("live-frames test run on {iface}: {e}"))?;
                sent += u64::from(repeat);
            }
            Ok(Sent {
                frames: sent,
                elapsed: started.elapsed(),
                cpu: thread_cpu_time().saturating_sub(cpu_before),
            })
        })
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
