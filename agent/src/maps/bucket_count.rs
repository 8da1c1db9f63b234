//! Counting the token buckets in `BUCKETS` (see `agent_common::buckets`): its slots read
//! through a memory mapping made for each count, a pass over a few megabytes where a
//! system call for each set would take a second or more at a million sources.

use std::os::fd::{AsFd as _, AsRawFd as _};

use agent_common::buckets::{BucketSet, BucketSlot, WAYS};
use aya::maps::{Map, MapData};
use memmap2::MmapOptions;

use super::{MapsError, names};

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
        // SAFETY: a read-only mapping of the array's values, `sets` of them. The kernel
        // writes slots meanwhile; each rule id is read whole (an aligned u32, volatile)
        // and a slot changing owner during the count is counted either way.
        let mapped = unsafe {
            MmapOptions::new()
                .len(self.sets * size_of::<BucketSet>())
                .map(self.map.fd().as_fd().as_raw_fd())
        }
        .map_err(|source| MapsError::Mmap {
            name: names::BUCKETS.name,
            source,
        })?;
        let slots = mapped.as_ptr().cast::<BucketSlot>();
        Ok((0..self.sets * WAYS)
            // SAFETY: every index is within the mapping, which is page-aligned, so each
            // slot is aligned.
            .filter(
                |&i| unsafe { core::ptr::read_volatile(&raw const (*slots.add(i)).key.rule) } != 0,
            )
            .count())
    }
}
