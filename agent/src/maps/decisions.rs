//! Detector decisions (CrowdSec bans): the maps the decision sync keeps in step with the
//! Local API. It is their only writer; telemetry reads them through its own handles.
//! Decisions on one address (a /32 or /128) are kept in hash maps, wider ones in LPM tries
//! (see `agent_common::maps::DECISION_IP_V4`); `set` and `remove` choose by prefix length.

use agent_common::DecisionEntry;
use aya::maps::{
    Array, HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;

use super::{
    MapsError, ctx,
    empty_mark::{EmptyMark, both_empty},
    is_missing, lpm_entries, names, second_handle, typed,
};

/// The four maps, by family and by whether they hold addresses or wider prefixes.
pub struct DecisionTables {
    ips_v4: HashMap<MapData, [u8; 4], DecisionEntry>,
    ips_v6: HashMap<MapData, [u8; 16], DecisionEntry>,
    ranges_v4: LpmTrie<MapData, [u8; 4], DecisionEntry>,
    ranges_v6: LpmTrie<MapData, [u8; 16], DecisionEntry>,
}

/// The maps as taken out of the object, before they are typed.
pub(super) struct DecisionMapsTaken {
    ips_v4: Map,
    ips_v6: Map,
    ranges_v4: Map,
    ranges_v6: Map,
}

impl DecisionMapsTaken {
    pub(super) fn take(
        take: &mut impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            ips_v4: take(names::DECISION_IP_V4.name)?,
            ips_v6: take(names::DECISION_IP_V6.name)?,
            ranges_v4: take(names::DECISIONS_V4.name)?,
            ranges_v6: take(names::DECISIONS_V6.name)?,
        })
    }

    /// Typed handles on second descriptors of the same maps, for a reader.
    pub(super) fn second(&self) -> Result<DecisionTables, MapsError> {
        Ok(DecisionTables {
            ips_v4: typed(names::DECISION_IP_V4.name, second_handle(&self.ips_v4)?)?,
            ips_v6: typed(names::DECISION_IP_V6.name, second_handle(&self.ips_v6)?)?,
            ranges_v4: typed(names::DECISIONS_V4.name, second_handle(&self.ranges_v4)?)?,
            ranges_v6: typed(names::DECISIONS_V6.name, second_handle(&self.ranges_v6)?)?,
        })
    }

    pub(super) fn typed(self) -> Result<DecisionTables, MapsError> {
        Ok(DecisionTables {
            ips_v4: typed(names::DECISION_IP_V4.name, self.ips_v4)?,
            ips_v6: typed(names::DECISION_IP_V6.name, self.ips_v6)?,
            ranges_v4: typed(names::DECISIONS_V4.name, self.ranges_v4)?,
            ranges_v6: typed(names::DECISIONS_V6.name, self.ranges_v6)?,
        })
    }
}

impl DecisionTables {
    /// Every decision in the maps, ended or not.
    pub fn entries(&self) -> Result<Vec<(IpNet, DecisionEntry)>, MapsError> {
        let mut entries = lpm_entries(&self.ranges_v4, &self.ranges_v6)?;
        for entry in self.ips_v4.iter() {
            let (addr, value) = entry.map_err(ctx(names::DECISION_IP_V4.name))?;
            entries.push((IpNet::from(std::net::IpAddr::from(addr)), value));
        }
        for entry in self.ips_v6.iter() {
            let (addr, value) = entry.map_err(ctx(names::DECISION_IP_V6.name))?;
            entries.push((IpNet::from(std::net::IpAddr::from(addr)), value));
        }
        Ok(entries)
    }
}

pub struct DecisionMaps {
    pub(super) tables: DecisionTables,
    /// `HAS_ADDRESSES`, whose `DECISION_ADDRESSES` entry says which address maps the
    /// kernel must look in, and what was last written there.
    pub(super) has_addresses: Array<MapData, u32>,
    pub(super) has: u32,
    /// `EMPTY_TRIES`' mark of the tries (`DECISIONS_V4`, `DECISIONS_V6`).
    pub(super) ranges_empty: EmptyMark,
}

impl DecisionMaps {
    /// Every decision in the maps, ended or not.
    pub fn entries(&self) -> Result<Vec<(IpNet, DecisionEntry)>, MapsError> {
        self.tables.entries()
    }

    /// Tells the kernel which address maps and tries hold decisions, from what they hold
    /// now. A map is marked as holding some as entries arrive (`set`), and as holding none
    /// only here: a mark behind the maps' contents costs a lookup, never a decision.
    pub fn refresh_marks(&mut self) -> Result<(), MapsError> {
        let (ranges_v4, ranges_v6) = (&self.tables.ranges_v4, &self.tables.ranges_v6);
        self.ranges_empty
            .refresh(|| both_empty(ranges_v4, ranges_v6, names::DECISIONS_V4.name))?;
        let mut has = 0;
        if self.tables.ips_v4.keys().next().is_some() {
            has |= names::HAS_V4;
        }
        if self.tables.ips_v6.keys().next().is_some() {
            has |= names::HAS_V6;
        }
        self.write_has(has)
    }

    fn write_has(&mut self, has: u32) -> Result<(), MapsError> {
        self.has_addresses
            .set(names::DECISION_ADDRESSES, has, 0)
            .map_err(ctx(names::HAS_ADDRESSES.name))?;
        self.has = has;
        Ok(())
    }

    /// Puts `entry` on exactly `net`, in place of what was there.
    pub fn set(&mut self, net: IpNet, entry: DecisionEntry) -> Result<(), MapsError> {
        let mark = match net {
            IpNet::V4(n) if n.prefix_len() == 32 => names::HAS_V4,
            IpNet::V6(n) if n.prefix_len() == 128 => names::HAS_V6,
            _ => 0,
        };
        if mark == 0 {
            self.ranges_empty.clear()?;
        }
        self.set_entry(net, entry)?;
        // After the entry: a packet that sees the mark finds what it marks.
        if self.has & mark != mark {
            self.write_has(self.has | mark)?;
        }
        Ok(())
    }

    fn set_entry(&mut self, net: IpNet, entry: DecisionEntry) -> Result<(), MapsError> {
        let t = &mut self.tables;
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => t
                .ips_v4
                .insert(n.addr().octets(), entry, 0)
                .map_err(ctx(names::DECISION_IP_V4.name)),
            IpNet::V6(n) if n.prefix_len() == 128 => t
                .ips_v6
                .insert(n.addr().octets(), entry, 0)
                .map_err(ctx(names::DECISION_IP_V6.name)),
            IpNet::V4(n) => t
                .ranges_v4
                .insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    entry,
                    0,
                )
                .map_err(ctx(names::DECISIONS_V4.name)),
            IpNet::V6(n) => t
                .ranges_v6
                .insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    entry,
                    0,
                )
                .map_err(ctx(names::DECISIONS_V6.name)),
        }
    }

    /// Removes exactly `net`; false if it was not there.
    pub fn remove(&mut self, net: IpNet) -> Result<bool, MapsError> {
        if self.remove_from(net, true)? {
            return Ok(true);
        }
        // Agents before the address maps kept addresses in the tries, and an agent that
        // takes their pins over finds them there.
        let is_address = net.prefix_len() == net.max_prefix_len();
        if is_address {
            return self.remove_from(net, false);
        }
        Ok(false)
    }

    /// Removes `net` from the address maps when `by_length` and it is an address, else from
    /// the tries.
    fn remove_from(&mut self, net: IpNet, by_length: bool) -> Result<bool, MapsError> {
        let t = &mut self.tables;
        let (result, name) = match net {
            IpNet::V4(n) if by_length && n.prefix_len() == 32 => (
                t.ips_v4.remove(&n.addr().octets()),
                names::DECISION_IP_V4.name,
            ),
            IpNet::V6(n) if by_length && n.prefix_len() == 128 => (
                t.ips_v6.remove(&n.addr().octets()),
                names::DECISION_IP_V6.name,
            ),
            IpNet::V4(n) => (
                t.ranges_v4
                    .remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
                names::DECISIONS_V4.name,
            ),
            IpNet::V6(n) => (
                t.ranges_v6
                    .remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
                names::DECISIONS_V6.name,
            ),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(source) => Err(MapsError::Map { name, source }),
        }
    }
}
