//! One policy set's port rules (`PORT_RULES_*`): an array with an entry for every port of
//! TCP and UDP, written through a memory mapping made for each write. An apply writes the
//! ports either policy names, and a whole class only when its class rules change: a pass
//! over 1 MB of memory, where a system call for each of its 65,536 entries would take tens
//! of milliseconds. Only the set not in force is written (see `policy`), so no packet
//! reads an entry while it changes.

use std::{
    ops::RangeInclusive,
    os::fd::{AsFd as _, AsRawFd as _},
};

use agent_common::{CLASS_TCP, CLASS_UDP, PortRules, maps::PORT_RULE_ENTRIES, port_key};
use aya::maps::{Map, MapData};
use memmap2::{MmapMut, MmapOptions};

use super::MapsError;
use crate::tables::Tables;

/// Bytes between entries: the kernel rounds an array's values up to 8 bytes.
const STRIDE: usize = size_of::<PortRules>().next_multiple_of(8);

pub(super) struct PortTable {
    /// For errors.
    name: &'static str,
    map: MapData,
}

impl PortTable {
    pub(super) fn new(name: &'static str, map: Map) -> Result<Self, MapsError> {
        let Map::Array(map) = map else {
            return Err(MapsError::NotAnArray { name });
        };
        Ok(Self { name, map })
    }

    /// Moves the table from what `old` gives each port to what `new` does: the ports
    /// either names, or the whole class where its rules changed.
    pub(super) fn write(&self, old: &Tables, new: &Tables) -> Result<(), MapsError> {
        let mut entries = self.entries()?;
        for class in [CLASS_TCP, CLASS_UDP] {
            let inherited = new.class_rules[usize::from(class)];
            if old.class_rules[usize::from(class)] != inherited {
                entries.fill(class, new);
                continue;
            }
            let named = old.port_rules.range(ports(class));
            for (key, _) in named.chain(new.port_rules.range(ports(class))) {
                entries.set(*key, new.port_rules.get(key).unwrap_or(&inherited));
            }
        }
        Ok(())
    }

    /// Empties every entry, whatever the table held.
    pub(super) fn clear(&self) -> Result<(), MapsError> {
        let mut entries = self.entries()?;
        for class in [CLASS_TCP, CLASS_UDP] {
            entries.fill(class, &Tables::default());
        }
        Ok(())
    }

    /// The entries, mapped for one write: a mapping kept between applies would count the
    /// 2 MB it has touched in the agent's resident memory.
    fn entries(&self) -> Result<Entries, MapsError> {
        let len = PORT_RULE_ENTRIES as usize * STRIDE;
        // SAFETY: the mapping covers the array's values, which the kernel programs only
        // read and only this table writes; `len` is the array's size (its entry count from
        // the shared spec, which `tests/tests/object.rs` checks the object against).
        let mapped = unsafe {
            MmapOptions::new()
                .len(len)
                .map_mut(self.map.fd().as_fd().as_raw_fd())
        };
        mapped.map(Entries).map_err(|source| MapsError::Mmap {
            name: self.name,
            source,
        })
    }
}

/// The table's entries, mapped into this process.
struct Entries(MmapMut);

impl Entries {
    /// Makes every entry of `class` what `tables` gives its port.
    fn fill(&mut self, class: u8, tables: &Tables) {
        let inherited = encode(&tables.class_rules[usize::from(class)]);
        let first = port_key(class, 0) as usize * STRIDE;
        let entries = &mut self.0[first..][..PORTS * STRIDE];
        for entry in entries.chunks_exact_mut(STRIDE) {
            if *entry != inherited {
                entry.copy_from_slice(&inherited);
            }
        }
        for (key, rules) in tables.port_rules.range(ports(class)) {
            self.set(*key, rules);
        }
    }

    fn set(&mut self, key: u32, rules: &PortRules) {
        self.0[key as usize * STRIDE..][..STRIDE].copy_from_slice(&encode(rules));
    }
}

/// Ports of a class.
const PORTS: usize = 1 << 16;

/// The keys of `class`'s ports.
fn ports(class: u8) -> RangeInclusive<u32> {
    port_key(class, 0)..=port_key(class, u16::MAX)
}

/// `rules` as the kernel reads it: `PortRules`' fields in order, in native byte order,
/// then the padding to the stride.
fn encode(rules: &PortRules) -> [u8; STRIDE] {
    let PortRules {
        packet_rule,
        connection_rule,
        http,
    } = *rules;
    let mut bytes = [0; STRIDE];
    for (i, field) in [packet_rule, connection_rule, http].into_iter().enumerate() {
        bytes[i * 4..][..4].copy_from_slice(&field.to_ne_bytes());
    }
    bytes
}

// `encode` writes exactly the three fields of a `repr(C)` struct of three `u32`s.
const _: () = assert!(size_of::<PortRules>() == 12 && STRIDE == 16);
