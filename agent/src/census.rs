//! How full the maps are, counted on a thread of its own and served from the last count.
//! Counting the bucket map is one system call per key (a million keys take a second or
//! two), and under a flood of new sources the kernel restarts the walk whenever its current
//! key is evicted: no request waits on that. A walk has a time budget, and the next waits
//! four times as long as the last took, so counting takes a fifth of a CPU at most.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use crate::{maps::Origin, telemetry::Telemetry};

/// How often the maps are counted, at the most.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The longest a bucket count may take.
const BUCKET_BUDGET: Duration = Duration::from_secs(3);

/// The last count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub buckets: usize,
    /// False when the bucket count ran out of time: `buckets` is the previous count.
    pub buckets_complete: bool,
    pub bans: usize,
    pub blocks: usize,
    /// How long this count took.
    pub took: Duration,
    /// When it was taken.
    pub at: Option<Instant>,
}

/// Counts the maps of `telemetry`; the previous bucket count stands if this one runs out
/// of time.
pub fn take(telemetry: &Telemetry, previous: &Census) -> Census {
    let started = Instant::now();
    let limit = telemetry.in_force().capacity.sources as usize;
    let counted = telemetry
        .maps()
        .count_buckets(Instant::now() + BUCKET_BUDGET, limit);
    let (bans, blocks) = match telemetry.maps().blocks_and_bans() {
        Ok(all) => (
            all.iter()
                .filter(|b| b.origin == Origin::Escalation)
                .count(),
            all.iter().filter(|b| b.origin == Origin::Block).count(),
        ),
        Err(e) => {
            telemetry.count_runtime_error("map census");
            tracing::warn!(error = %e, "counting bans failed; the previous count stands");
            (previous.bans, previous.blocks)
        }
    };
    Census {
        buckets: counted.unwrap_or(previous.buckets),
        buckets_complete: counted.is_some(),
        bans,
        blocks,
        took: started.elapsed(),
        at: Some(Instant::now()),
    }
}

/// Counts now, then every `INTERVAL` on a thread of its own, until `telemetry` is dropped.
pub fn spawn(telemetry: &Arc<Telemetry>) {
    telemetry.refresh_census();
    let weak: Weak<Telemetry> = Arc::downgrade(telemetry);
    let spawned = std::thread::Builder::new()
        .name("map-census".into())
        .spawn(move || {
            let mut pause = INTERVAL;
            loop {
                std::thread::sleep(pause);
                let Some(telemetry) = weak.upgrade() else {
                    return;
                };
                telemetry.refresh_census();
                pause = INTERVAL.max(telemetry.census().took * 4);
            }
        });
    if let Err(e) = spawned {
        telemetry.count_runtime_error("map census");
        tracing::error!(error = %e, "no census thread: map occupancy stays as first counted");
    }
}
