//! Bans and blocks: `portcullis block` and `unblock`, and the sweep of expired bans. The
//! kernel makes escalation bans itself; this is the agent's only writer of the ban maps.

use agent_common::BanEntry;
use aya::maps::{
    MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;

use super::{BPF_NOEXIST, MapsError, ctx, ignore_missing, is_missing, names};

pub struct BanMaps {
    pub(super) bans_v4: LpmTrie<MapData, [u8; 4], BanEntry>,
    pub(super) bans_v6: LpmTrie<MapData, [u8; 16], BanEntry>,
}

impl BanMaps {
    /// Bans `net` under `BLOCK_RULE` until `expires_ns`. Fails if that exact prefix is
    /// already banned.
    pub fn block(&mut self, net: IpNet, expires_ns: u64) -> Result<(), MapsError> {
        let ban = BanEntry {
            expires_ns,
            rule: agent_common::BLOCK_RULE,
            epoch: agent_common::BLOCK_EPOCH,
        };
        let result = match net {
            IpNet::V4(n) => self
                .bans_v4
                .insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    ban,
                    BPF_NOEXIST,
                )
                .map_err(ctx(names::BANS_V4.name)),
            IpNet::V6(n) => self
                .bans_v6
                .insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    ban,
                    BPF_NOEXIST,
                )
                .map_err(ctx(names::BANS_V6.name)),
        };
        match result {
            Err(MapsError::Map {
                source: MapError::SyscallError(e),
                ..
            }) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Err(MapsError::AlreadyBanned { net })
            }
            other => other,
        }
    }

    /// Lifts the ban on exactly `net`; false if there was none.
    pub fn unban(&mut self, net: IpNet) -> Result<bool, MapsError> {
        let result = match net {
            IpNet::V4(n) => self
                .bans_v4
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets()))
                .map_err(ctx(names::BANS_V4.name)),
            IpNet::V6(n) => self
                .bans_v6
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets()))
                .map_err(ctx(names::BANS_V6.name)),
        };
        match result {
            Ok(()) => Ok(true),
            Err(MapsError::Map { source, .. }) if is_missing(&source) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes bans whose time is up, so the map does not fill with dead entries (the
    /// kernel already ignores them). Returns how many were removed.
    pub fn sweep_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        let expired_v4: Vec<Key<[u8; 4]>> = self
            .bans_v4
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, ban)| ban.expires_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        let expired_v6: Vec<Key<[u8; 16]>> = self
            .bans_v6
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, ban)| ban.expires_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        let removed = expired_v4.len() + expired_v6.len();
        for key in expired_v4 {
            ignore_missing(self.bans_v4.remove(&key)).map_err(ctx(names::BANS_V4.name))?;
        }
        for key in expired_v6 {
            ignore_missing(self.bans_v6.remove(&key)).map_err(ctx(names::BANS_V6.name))?;
        }
        Ok(removed)
    }
}
