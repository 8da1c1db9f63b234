//! Flood throughput over a veth pair: 64-byte UDP frames from the generator
//! (`portcullis_tests::flood`) into each filter in turn, from one source and from 1,048,576
//! spoofed ones.
//!
//! The receiving interface runs threaded NAPI, so the receiving side works in its own
//! kernel thread as it would behind a NIC, and the generator runs on the other CPU. What
//! overflows the veth's ring is dropped there, like a NIC ring's overflow. Frames per second
//! received is what the receiving side handled; next to it, what the generator offered and
//! the share the ring dropped. A row whose ring dropped nothing was limited by the
//! generator, not by the filter: its rate is a lower bound of what the filter takes.

use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};
use portcullis_tests::{
    agent,
    flood::{Flood, Generator, Sent, Sources, udp_frame},
    netns::{NetnsPair, in_ns},
};
use serde_json::{Value, json};

use crate::{
    Scale,
    filters::{Filter, Installed},
    median,
};

/// A source inside `filters::FLOOD_NET`; spoofed frames vary its low 20 bits.
pub const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 1);
/// Nobody listens there: what passes every filter ends as the stack's "no port".
pub const FLOOD_PORT: u16 = 9;

/// What one filter did with a flood.
pub struct Outcome {
    pub packets_per_second: f64,
    /// Each round's frames per second, in round order (the rounds go round-robin over the
    /// filters, so round `i` of two filters ran minutes apart at most).
    pub rates: Vec<f64>,
    /// For Portcullis and the ceiling: the program's own time per run, from the kernel's
    /// BPF statistics over one more flood of the same length.
    pub program_ns_per_run: Option<f64>,
    /// Share of received frames that did not reach the stack.
    pub dropped: f64,
    /// Frames per second the generator offered (median over rounds).
    pub offered: f64,
    /// Share of offered frames the receiving ring dropped (median over rounds): above zero
    /// when the receiving side, not the generator, set the rate.
    pub overflow: f64,
    /// The agent's largest RSS while flooded, for Portcullis.
    pub agent_rss_kib: Option<u64>,
    /// The agent's event counters after the flood (written, suppressed, lost), for Portcullis.
    pub events: Option<Value>,
}

/// One filter installed on its own pair, ready to be flooded.
struct Case {
    filter: Filter,
    pair: NetnsPair,
    installed: Installed,
    frame: Vec<u8>,
    rss: Option<RssSampler>,
    rates: Vec<f64>,
    dropped: Vec<f64>,
    offered: Vec<f64>,
    overflow: Vec<f64>,
}

impl Case {
    fn new(filter: Filter) -> Result<Self> {
        let pair = NetnsPair::new()?;
        let installed = filter.install(&pair, &[&pair.server_if])?;
        // Threaded NAPI: the receiving side runs in its own kernel thread, on the other
        // CPU, not inside the generator's system calls; the generator only fills the ring,
        // and what the receiving side handles is its own throughput.
        let threaded = format!("echo 1 > /sys/class/net/{}/threaded", pair.server_if);
        in_ns(&pair.server_ns, &["sh", "-c", &threaded])?;
        let frame = udp_frame(pair.server_mac()?, FLOOD_SOURCE, FLOOD_PORT)?;
        let rss = installed
            .agent
            .as_ref()
            .and_then(|a| a.pid())
            .map(RssSampler::start);
        Ok(Self {
            filter,
            pair,
            installed,
            frame,
            rss,
            rates: Vec::new(),
            dropped: Vec::new(),
            offered: Vec::new(),
            overflow: Vec::new(),
        })
    }

    fn flood(&self, generator: &Generator, sources: Sources, limit: Duration) -> Result<Sent> {
        generator.send(
            &self.pair.client_ns,
            &self.pair.client_if,
            &Flood {
                frame: &self.frame,
                sources,
                frames: u64::MAX,
                limit,
                per_second: None,
                realtime: false,
            },
        )
    }

    /// One measured flood.
    fn measure(&mut self, generator: &Generator, sources: Sources, scale: &Scale) -> Result<()> {
        let pair = &self.pair;
        let (rx, passed) = (pair.server_rx_packets()?, pair.server_udp_no_ports()?);
        let ring = pair.server_rx_dropped()?;
        let sent = self.flood(generator, sources, scale.flood_time)?;
        let received = pair.server_rx_packets()? - rx;
        let passed = pair.server_udp_no_ports()? - passed;
        let overflowed = pair.server_rx_dropped()? - ring;
        let seconds = sent.elapsed.as_secs_f64();
        self.rates.push(received as f64 / seconds);
        self.dropped
            .push(1.0 - passed as f64 / received.max(1) as f64);
        self.offered.push(sent.frames as f64 / seconds);
        self.overflow
            .push(overflowed as f64 / sent.frames.max(1) as f64);
        Ok(())
    }

    /// One more flood with the kernel timing BPF programs: the program's own time per run,
    /// Portcullis's or the ceiling's (the rest of a packet's cost is the stack's and the
    /// bed's). Not one of the measured rounds: timing costs every program a little a run.
    fn program_time(
        &self,
        generator: &Generator,
        sources: Sources,
        scale: &Scale,
    ) -> Result<Option<f64>> {
        let Some(id) = self.installed.program_id()? else {
            return Ok(None);
        };
        let run = |id: u32| -> Result<(u64, u64)> {
            let info = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|info| info.id() == id)
                .with_context(|| format!("program {id} is not loaded"))?;
            Ok((info.run_time().as_nanos() as u64, info.run_count()))
        };
        let _timing = portcullis::bpf_stats::enable().context("BPF_ENABLE_STATS")?;
        let (time, count) = run(id)?;
        self.flood(generator, sources, scale.flood_time)?;
        let (time_after, count_after) = run(id)?;
        let runs = count_after.saturating_sub(count);
        Ok((runs > 0).then(|| (time_after - time) as f64 / runs as f64))
    }

    fn outcome(self, program_ns_per_run: Option<f64>) -> Result<Outcome> {
        let events = match &self.installed.agent {
            Some(agent) => {
                let out = agent.cli(&["stats", "--json"]);
                let stats: Value = serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "portcullis stats --json: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
                Some(stats["events"].clone())
            }
            None => None,
        };
        Ok(Outcome {
            packets_per_second: median(self.rates.clone()),
            rates: self.rates,
            program_ns_per_run,
            dropped: median(self.dropped),
            offered: median(self.offered),
            overflow: median(self.overflow),
            agent_rss_kib: self.rss.map(RssSampler::stop),
            events,
        })
    }
}

/// Floods every filter, each on its own pair, `scale.flood_rounds` times. The rounds go
/// round-robin over the filters, so that a slow spell of this shared machine falls on all
/// of them rather than on whichever ran then.
fn measure_all(
    generator: &Generator,
    filters: &[Filter],
    sources: Sources,
    scale: &Scale,
) -> Result<Vec<(Filter, Outcome)>> {
    let mut cases: Vec<Case> = filters
        .iter()
        .map(|&f| Case::new(f))
        .collect::<Result<_>>()?;
    // Warm up: page pools, the filters' tables, the agents' first summaries.
    for case in &cases {
        case.flood(generator, sources, scale.flood_time / 4)?;
    }
    for _ in 0..scale.flood_rounds {
        for case in &mut cases {
            case.measure(generator, sources, scale)?;
        }
    }
    cases
        .into_iter()
        .map(|case| {
            let program = case.program_time(generator, sources, scale)?;
            Ok((case.filter, case.outcome(program)?))
        })
        .collect()
}

/// Samples a process's RSS on a thread until stopped; keeps the largest.
struct RssSampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut largest = 0;
            loop {
                largest = largest.max(agent::rss_kib(pid).unwrap_or(0));
                if stopped.recv_timeout(Duration::from_millis(100)).is_ok() {
                    return largest;
                }
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(0)
    }
}

const ONE_SOURCE: &[Filter] = &[
    Filter::DropAll,
    Filter::DropAllBusy,
    Filter::None,
    Filter::PortcullisXdpDeny { events: true },
    Filter::PortcullisXdpDeny { events: false },
    Filter::PortcullisXdpLimit,
    Filter::PortcullisTcDeny,
    Filter::IptablesDrop,
    Filter::IptablesHashlimit,
    Filter::NftMeter,
];

const SPOOFED: &[Filter] = &[
    Filter::DropAll,
    Filter::None,
    Filter::PassAll,
    Filter::PortcullisXdpLimit,
    Filter::IptablesHashlimit,
    Filter::NftMeter,
];

pub fn run(scale: &Scale) -> Result<(String, Value)> {
    let generator = Generator::new()?;
    let mut md = String::new();
    let mut results = Vec::new();
    for (sources, filters, title) in [
        (Sources::One, ONE_SOURCE, "one source"),
        (Sources::Spoofed, SPOOFED, "1,048,576 spoofed sources"),
    ] {
        let _ = writeln!(
            md,
            "\n## Flood throughput, {title} (64-byte UDP over veth, median of {})\n\n\
             Added per packet: the median over rounds of 1/rate minus 1/rate of the ceiling \
             program in the same round, what the filter costs on top of what the bed costs. \
             Program per run: the kernel's BPF statistics over one more flood.\n\n\
             Offered: frames per second the generator sent; ring overflow: the share of them \
             the receiving veth's ring dropped. A row with no overflow was held back by the \
             generator: its rate is a lower bound of what that receiving side takes.\n\n\
             | receiving side | packets/s | min - max | added per packet | program per run | vs iptables hashlimit | dropped before the stack | offered | ring overflow | agent RSS (largest) |\n|---|---|---|---|---|---|---|---|---|---|",
            scale.flood_rounds
        );
        let outcomes = measure_all(&generator, filters, sources, scale)?;
        let ceiling = outcomes
            .iter()
            .find(|(f, _)| *f == Filter::DropAll)
            .map(|(_, o)| o.rates.clone())
            .context("no ceiling case")?;
        let iptables = outcomes
            .iter()
            .find(|(f, _)| *f == Filter::IptablesHashlimit)
            .map(|(_, o)| o.packets_per_second)
            .context("no iptables hashlimit baseline")?;
        for (filter, outcome) in &outcomes {
            let ratio = outcome.packets_per_second / iptables;
            let rss = outcome.agent_rss_kib.map_or("-".to_string(), |kib| {
                format!("{:.1} MiB", kib as f64 / 1024.0)
            });
            let added_ns = added_per_packet_ns(&outcome.rates, &ceiling);
            let (min, max) = spread(&outcome.rates);
            let program = outcome
                .program_ns_per_run
                .map_or("-".to_string(), |ns| format!("{ns:.0} ns"));
            let _ = writeln!(
                md,
                "| {} | {:.2} M | {:.2} - {:.2} M | {added_ns:.0} ns | {program} | {ratio:.2}x | {:.1}% | {:.2} M | {:.1}% | {rss} |",
                filter.label(),
                outcome.packets_per_second / 1e6,
                min / 1e6,
                max / 1e6,
                outcome.dropped * 100.0,
                outcome.offered / 1e6,
                outcome.overflow * 100.0
            );
            results.push(json!({
                "sources": title,
                "filter": filter.label(),
                "packets_per_second": outcome.packets_per_second,
                "rounds": outcome.rates,
                "added_ns_per_packet": added_ns,
                "program_ns_per_run": outcome.program_ns_per_run,
                "ratio_to_iptables_hashlimit": ratio,
                "dropped_share": outcome.dropped,
                "offered_packets_per_second": outcome.offered,
                "ring_overflow_share": outcome.overflow,
                "agent_rss_kib": outcome.agent_rss_kib,
                "agent_events": outcome.events,
            }));
        }
        if sources == Sources::One {
            events_table(&outcomes, &mut md);
        }
    }
    Ok((md, Value::Array(results)))
}

/// What a filter adds to each packet over the ceiling program, round by round: 1/rate of
/// the filter minus 1/rate of the ceiling in the same round, the median over rounds.
fn added_per_packet_ns(rates: &[f64], ceiling: &[f64]) -> f64 {
    let added: Vec<f64> = rates
        .iter()
        .zip(ceiling)
        .map(|(rate, ceiling)| 1e9 / rate - 1e9 / ceiling)
        .collect();
    median(added)
}

/// The lowest and highest of `rates`.
fn spread(rates: &[f64]) -> (f64, f64) {
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    (min, max)
}

/// The deny flood with events on (default budget) against events off.
fn events_table(outcomes: &[(Filter, Outcome)], md: &mut String) {
    let _ = writeln!(
        md,
        "\n## Events under a flood (Portcullis XDP deny, one source; counters over the whole case)\n\n| events | packets/s | written | suppressed by the budget | lost (ring full) |\n|---|---|---|---|---|"
    );
    for events in [true, false] {
        let Some((_, outcome)) = outcomes
            .iter()
            .find(|(f, _)| *f == Filter::PortcullisXdpDeny { events })
        else {
            continue;
        };
        let counter = |name: &str| {
            outcome
                .events
                .as_ref()
                .and_then(|e| e[name].as_u64())
                .unwrap_or(0)
        };
        let _ = writeln!(
            md,
            "| {} | {:.2} M | {} | {} | {} |",
            if events { "on (default budget)" } else { "off" },
            outcome.packets_per_second / 1e6,
            counter("written"),
            counter("suppressed"),
            counter("lost")
        );
    }
}
