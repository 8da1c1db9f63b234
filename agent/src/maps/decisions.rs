//! Detector decisions (CrowdSec bans): the maps the decision sync keeps in step with the
//! Local API. It is their only writer; telemetry reads them through its own handle.

use agent_common::DecisionEntry;
use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;

use super::{MapsError, ctx, is_missing, lpm_entries, names};

pub struct DecisionMaps {
    pub(super) v4: LpmTrie<MapData, [u8; 4], DecisionEntry>,
    pub(super) v6: LpmTrie<MapData, [u8; 16], DecisionEntry>,
}

impl DecisionMaps {
    /// Every decision in the maps, ended or not.
    pub fn entries(&self) -> Result<Vec<(IpNet, DecisionEntry)>, MapsError> {
        lpm_entries(&self.v4, &self.v6)
    }

    /// Puts `entry` on exactly `net`, in place of what was there.
    pub fn set(&mut self, net: IpNet, entry: DecisionEntry) -> Result<(), MapsError> {
        match net {
            IpNet::V4(n) => self
                .v4
                .insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    entry,
                    0,
                )
                .map_err(ctx(names::DECISIONS_V4.name)),
            IpNet::V6(n) => self
                .v6
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
        let (result, name) = match net {
            IpNet::V4(n) => (
                self.v4
                    .remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
                names::DECISIONS_V4.name,
            ),
            IpNet::V6(n) => (
                self.v6
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
