//! Counting the token buckets in `BUCKETS` (see `agent_common::buckets`): its slots read
//! through memory mappings made for each count, a pass over a few megabytes where a system
//! call for each set would take a second or more at a million sources.

use std::os::fd::{AsFd as _, AsRawFd as _};

use agent_common::buckets::{BucketSet, BucketSlot, WAYS};
use aya::maps::{Map, MapData};
use memmap2::MmapOptions;

use super::{MapsError, names};

/// Sets mapped at a time: 1 MiB, what a count adds to the agent's resident memory at most
/// (the whole array mapped at once added 8 MiB at the default capacity).
const SETS_PER_WINDOW: usize = (1 << 20) / size_of::<BucketSet>();

pub(super) struct BucketCount {
    map: MapData,
    /// The map's entry count, read once: it never changes.
    sets: usize,
}

impl BucketCount {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        let name = names::BUCKETS.name;
        let Map::Array(map) = map else {
            return Err(MapsError::NotAnArray { name });
        };
        let sets = map.info().map_err(super::ctx(name))?.max_entries() as usize;
        Ok(Self { map, sets })
    }

    /// Slots holding a bucket.
    pub(super) fn count(&self) -> Result<usize, MapsError> {
        let mut count = 0;
        for first in (0..self.sets).step_by(SETS_PER_WINDOW) {
            count += self.count_window(first, SETS_PER_WINDOW.min(self.sets - first))?;
        }
        Ok(count)
    }

    /// Slots holding a bucket among `sets` sets from set `first`.
    fn count_window(&self, first: usize, sets: usize) -> Result<usize, MapsError> {
        // SAFETY: a read-only mapping of `sets` of the array's values from `first`, which
        // is a whole number of pages in (a window is). The kernel writes slots meanwhile;
        // each rule id is read whole (an aligned u32, volatile), and a slot changing owner
        // during the count is counted either way.
        let mapped = unsafe {
            MmapOptions::new()
                .offset((first * size_of::<BucketSet>()) as u64)
                .len(sets * size_of::<BucketSet>())
                .map(self.map.fd().as_fd().as_raw_fd())
        }
        .map_err(|source| MapsError::Mmap {
            name: names::BUCKETS.name,
            source,
        })?;
        let slots = mapped.as_ptr().cast::<BucketSlot>();
        Ok((0..sets * WAYS)
            // SAFETY: every index is within the mapping, which is page-aligned, so each
            // slot is aligned.
            .filter(
                |&i| unsafe { core::ptr::read_volatile(&raw const (*slots.add(i)).key.rule) } != 0,
            )
            .count())
    }
}
