//! A packet generator for floods over a veth pair: an XDP program run with
//! BPF_F_TEST_XDP_LIVE_FRAMES on the client end sends each frame out of that interface, so
//! the server end receives it as it would from a NIC, millions of frames per second.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use portcullis::{
    loader::{self, FLOOD_PROGRAM, FLOOD_SPOOFED_PROGRAM},
    policy::Capacity,
};

use crate::netns::{NetnsPair, SERVER_V4};

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
}

/// A 60-byte UDP frame (64 on a wire, with the checksum) from `source` to the pair's server,
/// addressed to the server interface's MAC so that the server's IP stack takes it as its own.
pub fn udp_frame(pair: &NetnsPair, source: Ipv4Addr, dport: u16) -> Result<Vec<u8>> {
    let server: Ipv4Addr = SERVER_V4.parse()?;
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], pair.server_mac()?)
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

pub struct Generator {
    ebpf: Ebpf,
}

/// What one flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub frames: u64,
    pub elapsed: Duration,
}

impl Generator {
    pub fn new() -> Result<Self> {
        // The generator uses no maps; keep the object's as small as they go.
        let mut ebpf = loader::load_unpinned(&Capacity {
            sources: 1024,
            cidrs: 16,
            bans: 16,
        })?;
        for name in [FLOOD_PROGRAM, FLOOD_SPOOFED_PROGRAM] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the verifier rejected {name}"))?;
        }
        Ok(Self { ebpf })
    }

    /// Sends `frames` copies of `frame` out of the pair's client interface to the server,
    /// as fast as the server takes them, or fewer if `limit` passes first.
    pub fn flood(
        &self,
        pair: &NetnsPair,
        frame: &[u8],
        sources: Sources,
        frames: u64,
        limit: Duration,
    ) -> Result<Sent> {
        self.send(pair, frame, sources, frames, limit, None)
    }

    /// Sends `frame` at `per_second` frames per second for `duration`, in 1 ms chunks.
    pub fn flood_at(
        &self,
        pair: &NetnsPair,
        frame: &[u8],
        sources: Sources,
        per_second: u32,
        duration: Duration,
    ) -> Result<Sent> {
        self.send(pair, frame, sources, u64::MAX, duration, Some(per_second))
    }

    fn send(
        &self,
        pair: &NetnsPair,
        frame: &[u8],
        sources: Sources,
        frames: u64,
        limit: Duration,
        per_second: Option<u32>,
    ) -> Result<Sent> {
        let name = match sources {
            Sources::One => FLOOD_PROGRAM,
            Sources::Spoofed => FLOOD_SPOOFED_PROGRAM,
        };
        let program: &Xdp = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        let client_if = pair.client_if.clone();
        pair.client(move || {
            let ifindex = loader::ifindex(&client_if)?;
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex. The kernel wants data and data_meta 0, data_end the frame length.
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let started = Instant::now();
            let mut sent = 0u64;
            let chunk = per_second.map_or(FRAMES_PER_RUN, |rate| (rate / 1000).max(1));
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
                    .map_err(|e| anyhow!("live-frames test run on {client_if}: {e}"))?;
                sent += u64::from(repeat);
            }
            Ok(Sent {
                frames: sent,
                elapsed: started.elapsed(),
            })
        })
    }
}
