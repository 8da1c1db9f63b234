//! Blocks and bans: `portcullis block` and `unblock` (the block maps), and the sweep that
//! removes ended blocks and ended or void escalation bans by their exact keys. The kernel
//! makes escalation bans itself; this is the agent's only writer of these maps.

use std::collections::{BTreeSet, HashMap};

use agent_common::{BLOCK_EPOCH, BLOCK_RULE, BanEntry, BlockEntry};
use aya::maps::{
    MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;

use super::{
    BPF_NOEXIST, MapsError, ctx,
    empty_mark::{EmptyMark, both_empty},
    is_missing, lpm_entries, names,
};

pub struct BanMaps {
    pub(super) blocks_v4: LpmTrie<MapData, [u8; 4], BlockEntry>,
    pub(super) blocks_v6: LpmTrie<MapData, [u8; 16], BlockEntry>,
    pub(super) bans_v4: LpmTrie<MapData, [u8; 4], BanEntry>,
    pub(super) bans_v6: LpmTrie<MapData, [u8; 16], BanEntry>,
    pub(super) blocks_empty: EmptyMark,
    pub(super) bans_empty: EmptyMark,
}

/// What a sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// The blocks that ended.
    pub blocks: Vec<IpNet>,
    pub bans: usize,
    /// Bans a wider ban of the same rule now covers (ban aggregation), removed.
    pub covered: usize,
    /// Blocks an earlier agent kept in the ban maps, moved to the block maps.
    pub moved: usize,
}

fn v4_key(net: ipnet::Ipv4Net) -> Key<[u8; 4]> {
    Key::new(net.prefix_len().into(), net.addr().octets())
}

fn v6_key(net: ipnet::Ipv6Net) -> Key<[u8; 16]> {
    Key::new(net.prefix_len().into(), net.addr().octets())
}

/// Removes exactly `net` from the IPv4 or IPv6 trie of a pair, whose map names are
/// `names`; false if it was not there.
fn remove<V: aya::Pod>(
    v4: &mut LpmTrie<MapData, [u8; 4], V>,
    v6: &mut LpmTrie<MapData, [u8; 16], V>,
    names: [&'static str; 2],
    net: IpNet,
) -> Result<bool, MapsError> {
    let (result, name) = match net {
        IpNet::V4(n) => (v4.remove(&v4_key(n)), names[0]),
        IpNet::V6(n) => (v6.remove(&v6_key(n)), names[1]),
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(source) => Err(MapsError::Map { name, source }),
    }
}

/// The map names of each pair.
const BLOCKS: [&str; 2] = [names::BLOCKS_V4.name, names::BLOCKS_V6.name];
const BANS: [&str; 2] = [names::BANS_V4.name, names::BANS_V6.name];

impl BanMaps {
    /// Blocks `net` until `expires_ns`. Fails if that exact prefix is already blocked; an
    /// escalation ban of the same prefix does not stand in the way.
    pub fn block(&mut self, net: IpNet, expires_ns: u64) -> Result<(), MapsError> {
        let block = BlockEntry { expires_ns };
        self.blocks_empty.clear()?;
        let result = match net {
            IpNet::V4(n) => self
                .blocks_v4
                .insert(&v4_key(n), block, BPF_NOEXIST)
                .map_err(ctx(names::BLOCKS_V4.name)),
            IpNet::V6(n) => self
                .blocks_v6
                .insert(&v6_key(n), block, BPF_NOEXIST)
                .map_err(ctx(names::BLOCKS_V6.name)),
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

    /// Lifts the block on exactly `net`, or if there is none the escalation ban on exactly
    /// `net`; false if there was neither.
    pub fn unban(&mut self, net: IpNet) -> Result<bool, MapsError> {
        let removed = remove(&mut self.blocks_v4, &mut self.blocks_v6, BLOCKS, net)?
            || remove(&mut self.bans_v4, &mut self.bans_v6, BANS, net)?;
        self.refresh_marks()?;
        Ok(removed)
    }

    /// Marks the block maps and the ban maps empty for the kernel where they are (see
    /// `EmptyMark`).
    pub fn refresh_marks(&mut self) -> Result<(), MapsError> {
        let (blocks_v4, blocks_v6) = (&self.blocks_v4, &self.blocks_v6);
        self.blocks_empty
            .refresh(|| both_empty(blocks_v4, blocks_v6, names::BLOCKS_V4.name))?;
        let (bans_v4, bans_v6) = (&self.bans_v4, &self.bans_v6);
        self.bans_empty
            .refresh(|| both_empty(bans_v4, bans_v6, names::BANS_V4.name))
    }

    /// Removes blocks and bans that ended by `now_ns`, and bans `is_current` says no rule in
    /// force stands behind (its rule was removed or changed), each by its exact key, so the
    /// maps do not fill with dead entries (the kernel already ignores them). Moves the blocks
    /// an earlier agent kept in the ban maps into the block maps.
    pub fn sweep(
        &mut self,
        now_ns: u64,
        is_current: impl Fn(u32, u32) -> bool,
    ) -> Result<Swept, MapsError> {
        let mut swept = Swept::default();
        for (net, block) in lpm_entries(&self.blocks_v4, &self.blocks_v6)? {
            if block.expires_ns <= now_ns {
                remove(&mut self.blocks_v4, &mut self.blocks_v6, BLOCKS, net)?;
                swept.blocks.push(net);
            }
        }
        let mut live = HashMap::new();
        for (net, ban) in lpm_entries(&self.bans_v4, &self.bans_v6)? {
            let legacy_block = ban.rule == BLOCK_RULE && ban.epoch == BLOCK_EPOCH;
            if legacy_block && ban.expires_ns > now_ns {
                match self.block(net, ban.expires_ns) {
                    Ok(()) | Err(MapsError::AlreadyBanned { .. }) => {}
                    Err(e) => return Err(e),
                }
                swept.moved += 1;
            } else if ban.expires_ns > now_ns && is_current(ban.rule, ban.epoch) {
                live.insert(net, ban);
                continue;
            } else {
                swept.bans += 1;
            }
            remove(&mut self.bans_v4, &mut self.bans_v6, BANS, net)?;
        }
        for net in covered(&live) {
            remove(&mut self.bans_v4, &mut self.bans_v6, BANS, net)?;
            swept.covered += 1;
        }
        self.refresh_marks()?;
        Ok(swept)
    }
}

/// The bans in `live` that a wider ban of the same rule and epoch covers until at least
/// their own end. Only prefix lengths the rule's bans use are tried, so this is one or two
/// lookups a ban.
fn covered(live: &HashMap<IpNet, BanEntry>) -> Vec<IpNet> {
    let mut lengths: HashMap<(u32, bool), BTreeSet<u8>> = HashMap::new();
    for (net, ban) in live {
        let v4 = matches!(net, IpNet::V4(_));
        lengths
            .entry((ban.rule, v4))
            .or_default()
            .insert(net.prefix_len());
    }
    live.iter()
        .filter(|(net, ban)| {
            let v4 = matches!(net, IpNet::V4(_));
            lengths[&(ban.rule, v4)]
                .range(..net.prefix_len())
                .any(|&len| {
                    let wider = IpNet::new(net.addr(), len).expect("shorter than a valid prefix");
                    live.get(&wider.trunc()).is_some_and(|w| {
                        w.rule == ban.rule && w.epoch == ban.epoch && w.expires_ns >= ban.expires_ns
                    })
                })
        })
        .map(|(net, _)| *net)
        .collect()
}
