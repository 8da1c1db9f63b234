//! Ring-buffer events as JSON lines, and the periodic summary of counters.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use agent_common::{
    Event, EventAction, MalformedCause, Reason, RuleCounters, decision::Origin, http::Method,
};
use serde_json::json;

use crate::{maps::Counters, telemetry::RulesInForce};

/// Converts `bpf_ktime_get_ns` times to wall-clock times.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let mono = Duration::from_nanos(crate::maps::monotonic_now_ns());
        Self {
            wall_at_zero: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.wall_at_zero + Duration::from_nanos(ktime_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn source(event: &Event) -> IpAddr {
    if event.family == 4 {
        let b = &event.src[12..16];
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(event.src))
    }
}

pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        other => other.to_string(),
    }
}

/// Turns one event into its JSON line. `rules` names rule ids, `ifaces` interface indexes.
pub fn format(
    event: &Event,
    clock: &Clock,
    rules: &RulesInForce,
    ifaces: &HashMap<u32, String>,
) -> String {
    let (action, mode, verdict) = match EventAction::from_code(event.action) {
        Some(action) => (action.name(), action.mode().name(), action.verdict().name()),
        None => ("unknown", "unknown", "unknown"),
    };
    let reason = Reason::from_code(event.reason);
    // A decision's event names its origin where the others name a rule.
    let rule = match reason {
        Some(Reason::Decision) => Origin::from_code(event.rule).name().to_string(),
        _ => rules.name(event.rule),
    };
    let reason = reason.map_or("unknown", Reason::name);
    let interface = ifaces
        .get(&event.ifindex)
        .cloned()
        .unwrap_or_else(|| event.ifindex.to_string());
    let mut line = json!({
        "time": humantime::format_rfc3339_nanos(clock.wall(event.ts_ns)).to_string(),
        "type": "event",
        "interface": interface,
        "source": source(event).to_string(),
        "dst_port": event.dport,
        "protocol": protocol_name(event.protocol),
        "reason": reason,
        "rule": rule,
        "mode": mode,
        "action": action,
        "verdict": verdict,
    });
    if let Some((method, target)) = request(event) {
        line["method"] = method.into();
        line["target"] = target.into();
    }
    line.to_string()
}

/// The HTTP request a route's event carries: its method, and its target as far as the
/// event holds it (up to the space before the HTTP version, or cut short), with bytes that
/// are not UTF-8 replaced; JSON escapes the rest.
fn request(event: &Event) -> Option<(&'static str, String)> {
    let len = usize::from(event.request_len).min(event.request.len());
    if len == 0 {
        return None;
    }
    let method = Method::from_code(event.request[0]).map_or("unknown", Method::name);
    let target = &event.request[1..len];
    let end = target
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(target.len());
    Some((method, String::from_utf8_lossy(&target[..end]).into_owned()))
}

/// Where event and summary lines go: stdout. Whoever reads it may go away (a closed pipe, a
/// full disk behind a redirect); the agent then carries on enforcing and answering, counts
/// the lines it could not write, and says so once in its log.
pub struct Output {
    stdout: std::io::Stdout,
    failing: bool,
}

impl Output {
    pub fn stdout() -> Self {
        Self {
            stdout: std::io::stdout(),
            failing: false,
        }
    }

    /// Writes `lines` and flushes; returns how many could not be written.
    pub fn write(&mut self, lines: &[String]) -> u64 {
        use std::io::Write as _;
        if lines.is_empty() {
            return 0;
        }
        let mut out = self.stdout.lock();
        let mut unwritten = 0;
        let mut error = None;
        for line in lines {
            if let Err(e) = writeln!(out, "{line}") {
                unwritten += 1;
                error = Some(e);
            }
        }
        if let Err(e) = out.flush() {
            error = Some(e);
        }
        match error {
            Some(e) if !self.failing => {
                self.failing = true;
                tracing::error!(
                    error = %e,
                    "cannot write events to stdout; enforcement goes on, and lines not written are counted (portcullis_output_lines_unwritten_total)"
                );
            }
            Some(_) => {}
            None if self.failing => {
                self.failing = false;
                tracing::info!("writing events to stdout again");
            }
            None => {}
        }
        unwritten
    }
}

/// How a drain of the ring buffer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every record there was has been read.
    Empty,
    /// Records were still coming when the deadline passed.
    DeadlinePassed,
}

/// Reads records with `next` (`None` once the ring is empty; `Some(None)` for a record too
/// short to be an event) and hands each event to `emit`, until the ring is empty or
/// `deadline` passes. Synchronous on purpose: the deadline is checked between records, so
/// it holds however fast the kernel writes.
pub fn drain(
    deadline: std::time::Instant,
    mut next: impl FnMut() -> Option<Option<Event>>,
    mut emit: impl FnMut(Event),
) -> Drained {
    while std::time::Instant::now() < deadline {
        match next() {
            None => return Drained::Empty,
            Some(Some(event)) => emit(event),
            Some(None) => {}
        }
    }
    Drained::DeadlinePassed
}

/// The summary line: counter totals, per-rule totals, and what changed since the last one.
pub fn summary(now: &Counters, last: &Counters, rules: &[(String, RuleCounters)]) -> String {
    let mut verdicts = serde_json::Map::new();
    let mut shadow = serde_json::Map::new();
    for reason in Reason::ALL {
        verdicts.insert(reason.name().into(), now.verdict(reason).into());
        if now.shadowed(reason) > 0 {
            shadow.insert(reason.name().into(), now.shadowed(reason).into());
        }
    }
    let malformed: serde_json::Map<String, serde_json::Value> = MalformedCause::ALL
        .iter()
        .filter(|cause| now.malformed(**cause) > 0)
        .map(|cause| (cause.name().into(), now.malformed(*cause).into()))
        .collect();
    let rules: serde_json::Map<String, serde_json::Value> = rules
        .iter()
        .map(|(name, c)| {
            let counts = json!({"passed": c.passed, "dropped": c.dropped, "shadowed": c.shadowed});
            (name.clone(), counts)
        })
        .collect();
    json!({
        "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "type": "summary",
        "verdicts": verdicts,
        "shadow": shadow,
        "malformed": malformed,
        "rules": rules,
        "events_written": now.events_written,
        "events_suppressed": now.events_suppressed,
        "events_suppressed_since_last": now.events_suppressed.saturating_sub(last.events_suppressed),
        "events_lost": now.events_lost,
        "bans_failed": now.bans_failed,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use agent_common::event::EVENT_REQUEST_BYTES;

    use super::*;

    #[test]
    fn a_drain_ends_when_the_ring_is_empty() {
        let mut left = vec![Some(Event::default()), None, Some(Event::default())];
        let mut emitted = 0;
        let drained = drain(
            Instant::now() + Duration::from_secs(60),
            || left.pop(),
            |_| emitted += 1,
        );
        assert_eq!((drained, emitted), (Drained::Empty, 2));
    }

    /// Programs left attached keep writing: a ring that never runs dry must not hold the
    /// shutdown past its deadline.
    #[test]
    fn a_drain_of_a_ring_that_never_empties_stops_at_the_deadline() {
        let started = Instant::now();
        let mut emitted = 0u64;
        let drained = drain(
            started + Duration::from_millis(100),
            || Some(Some(Event::default())),
            |_| emitted += 1,
        );
        assert_eq!(drained, Drained::DeadlinePassed);
        assert!(emitted > 0);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the drain ran {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_route_event_carries_the_method_and_the_target_escaped() {
        let mut event = Event::default();
        assert_eq!(request(&event), None, "not a route's event");
        let window = b"\x01/a\"b\xff HTTP/1.1\r\n";
        event.request[..window.len()].copy_from_slice(window);
        event.request_len = window.len() as u8;
        let (method, target) = request(&event).unwrap();
        assert_eq!((method, target.as_str()), ("GET", "/a\"b\u{fffd}"));
        // JSON escapes the quote; the replacement character is plain UTF-8.
        let line = json!({"target": target}).to_string();
        assert_eq!(line, "{\"target\":\"/a\\\"b\u{fffd}\"}");
        // A target longer than the event: what it holds, no more.
        event.request = [b'x'; EVENT_REQUEST_BYTES];
        event.request[0] = 3;
        event.request_len = EVENT_REQUEST_BYTES as u8;
        let (method, target) = request(&event).unwrap();
        assert_eq!((method, target.len()), ("POST", EVENT_REQUEST_BYTES - 1));
    }
}
