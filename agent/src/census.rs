//! How full the maps are, counted on a thread of its own and served from the last count.
//! Listing the ban tries is a system call per entry (hundreds of milliseconds at a
//! million): no request waits on that, and the next count waits four times as long as the
//! last took, so counting takes a fifth of a CPU at most.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use crate::{maps::Origin, telemetry::Telemetry};

/// How often the maps are counted, at the most.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The last count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub buckets: usize,
    pub bans: usize,
    pub blocks: usize,
    /// How long this count took.
    pub took: Duration,
    /// When it was taken.
    pub at: Option<Instant>,
}

/// Counts the maps of `telemetry`; a previous count stands where this one fails.
pub fn take(telemetry: &Telemetry, previous: &Census) -> Census {
    let started = Instant::now();
    let buckets = telemetry.maps().count_buckets().unwrap_or_else(|e| {
        telemetry.count_runtime_error("map census");
        tracing::warn!(error = %e, "counting buckets failed; the previous count stands");
        previous.buckets
    });
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
        buckets,
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
