//! Every map the kernel programs share with the agent, in one table: its name, kind, key
//! and value layout, flags, and how its entry count follows from the policy's `capacity`.
//! The kernel declares its maps from these specs (`agent-ebpf/src/maps.rs`, where each
//! static must carry the name given here), the agent sizes and checks maps from them, and
//! `tests/tests/object.rs` checks the built object against the table, so the two sides
//! cannot drift. Names are at most 15 characters: the kernel keeps 16 bytes with the NUL.

use core::mem::size_of;

use crate::{
    AclEntry, BanEntry, BanGroup, BlockEntry, BucketKey, CLASS_COUNT, CLASS_TCP, CLASS_UDP,
    DecisionEntry, Event, EventBudget, IfaceCounters, PortRules, RuleConfig, RuleCounters,
    Settings,
    buckets::BucketSet,
    http::{
        ACCEPTED_ENTRIES, Accepted, Charged, FlowKey, RESET_FLOWS_ENTRIES, ROUTE_KEY_BYTES,
        ROUTE_KEYS_PER_ROUTE, RouteEntry, RouteLookup, STATUS_CODES, StatusRules,
    },
    port_key,
};

/// `BPF_MAP_TYPE_*` numbers from the kernel's uapi (include/uapi/linux/bpf.h).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    RingBuf = 27,
}

/// Map sizes the policy chooses (its `capacity` section). Fixed when the programs load: a
/// change needs a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Token buckets kept (rounded up to whole sets; see `buckets`); a new source beyond
    /// this replaces the fullest bucket of its set.
    pub sources: u32,
    /// Entries per address family in each of the allow and deny lists.
    pub cidrs: u32,
    /// Escalation bans per address family.
    pub bans: u32,
    /// Operator blocks per address family, in maps of their own.
    pub blocks: u32,
    /// Named rules at most (rate limits, HTTP routes and response rules together).
    pub rules: u32,
    /// Detector decisions (CrowdSec bans) per address family.
    pub decisions: u32,
}

/// How many entries a map has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// Always this many (bytes, for the ring buffer).
    Fixed(u32),
    /// Twice `capacity.cidrs`: allow and deny entries share one trie per family.
    Cidrs,
    /// `capacity.bans`.
    Bans,
    /// `capacity.blocks`.
    Blocks,
    /// Sets of `buckets::WAYS` buckets for `capacity.sources` (`buckets::sets`).
    BucketSets,
    /// Rule ids: `capacity.rules` plus id 0 and the reserved ids (`rule_id_count`).
    Rules,
    /// HTTP route trie keys: `ROUTE_KEYS_PER_ROUTE` for each of `capacity.rules`.
    RouteKeys,
    /// `capacity.decisions`.
    Decisions,
}

/// What the object declares for maps the policy sizes; every loader replaces it.
const PLACEHOLDER_ENTRIES: u32 = 1024;

impl Entries {
    pub const fn count(self, capacity: &Capacity) -> u32 {
        match self {
            Entries::Fixed(count) => count,
            Entries::Cidrs => capacity.cidrs.saturating_mul(2),
            Entries::Bans => capacity.bans,
            Entries::Blocks => capacity.blocks,
            Entries::BucketSets => crate::buckets::sets(capacity.sources),
            Entries::Rules => rule_id_count(capacity.rules),
            Entries::RouteKeys => capacity.rules.saturating_mul(ROUTE_KEYS_PER_ROUTE),
            Entries::Decisions => capacity.decisions,
        }
    }
}

/// One map, as both sides must see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    /// `BPF_F_*` map flags.
    pub flags: u32,
    pub entries: Entries,
    pub contents: Contents,
}

/// What a map holds, which says what a starting agent may do with a pinned map of another
/// layout (an upgrade changed it, or the policy's `capacity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// State the agent cannot rebuild (blocks, bans): the start is refused, as replacing the
    /// map would lift what it holds.
    State,
    /// Derived from the policy (the two policy sets and `GENERATION`): all of them are
    /// replaced together and filled before the new programs attach, while the old programs
    /// keep reading their own maps until then.
    Policy,
    /// Counters, settings, buffers and token buckets: replaced on their own (counters start
    /// from zero; each source starts again with a full bucket, which costs a limited source
    /// one burst, where refusing the start would hold back the policy until `portcullis
    /// detach` dropped the bans too).
    Disposable,
}

impl MapSpec {
    /// The entry count the agent creates this map with under `capacity`.
    pub const fn max_entries(&self, capacity: &Capacity) -> u32 {
        self.entries.count(capacity)
    }

    /// The entry count the kernel object declares: fixed counts as they are, a placeholder
    /// for maps the policy sizes.
    pub const fn declared_entries(&self) -> u32 {
        match self.entries {
            Entries::Fixed(count) => count,
            _ => PLACEHOLDER_ENTRIES,
        }
    }

    /// True when the loader must set the entry count (it depends on the policy).
    pub const fn sized_by_policy(&self) -> bool {
        !matches!(self.entries, Entries::Fixed(_))
    }
}

const fn spec(
    name: &'static str,
    kind: MapKind,
    key_size: usize,
    value_size: usize,
    entries: Entries,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: key_size as u32,
        value_size: value_size as u32,
        // The kernel refuses an LPM trie without it (kernel/bpf/lpm_trie.c).
        flags: match kind {
            MapKind::LpmTrie => BPF_F_NO_PREALLOC,
            _ => 0,
        },
        entries,
        contents: Contents::State,
    }
}

impl MapSpec {
    const fn holding(self, contents: Contents) -> MapSpec {
        MapSpec { contents, ..self }
    }
}

/// LPM trie keys: a `u32` prefix length, then the address bytes in network order.
const LPM_V4_KEY: usize = 4 + 4;
const LPM_V6_KEY: usize = 4 + 16;
/// `BPF_F_NO_PREALLOC` (uapi): entries are allocated as they are inserted.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_MMAPABLE` (uapi): an array the agent can map into its memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Rule ids are indexes into `RULES` and `RULE_COUNTERS`; id 0 is never used, and the ids
/// below this one hold the reserved ids (`BLOCK_RULE`, `EVASION_RULE`), so the maps never
/// have fewer entries than this.
pub const MIN_RULE_IDS: u32 = 1024;
/// Ids that are not a named rule's: 0, `EVASION_RULE` and `BLOCK_RULE`.
pub const RESERVED_RULE_IDS: u32 = 3;

/// The rule id count (entries of `RULES` and `RULE_COUNTERS`) for `rules` named rules.
pub const fn rule_id_count(rules: u32) -> u32 {
    let count = rules.saturating_add(RESERVED_RULE_IDS);
    if count < MIN_RULE_IDS {
        MIN_RULE_IDS
    } else {
        count
    }
}
/// Every (class, port) pair there is, `port_key` of it: the classes with ports (TCP and
/// UDP, the first two) times every port.
pub const PORT_RULE_ENTRIES: u32 = 2 * 65536;
const _: () = assert!(
    port_key(CLASS_TCP, u16::MAX) < PORT_RULE_ENTRIES
        && port_key(CLASS_UDP, u16::MAX) < PORT_RULE_ENTRIES
);
/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Interfaces are counted in this many slots, by `ifindex % IFACE_SLOTS`; the agent warns
/// when two attached interfaces share one.
pub const IFACE_SLOTS: u32 = 256;

/// The maps of one policy set. There are two sets: packets are judged by the set
/// `GENERATION` names, the agent writes the other one and then switches, so every packet
/// sees one whole policy.
#[derive(Clone, Copy, Debug)]
pub struct PolicySetMaps {
    /// Hash, key IPv4 address, value `AclEntry`: allow and deny entries of one address (a
    /// /32), looked up before the trie: an address's own entry is the longest match there
    /// is, and a hash lookup costs the same for a list of 100,000 addresses as for one,
    /// where a trie that deep costs a flood some 500 ns a packet (BENCHMARKS.md).
    pub acl_ip_v4: MapSpec,
    /// Hash, key IPv6 address, value `AclEntry`: entries of one address (a /128).
    pub acl_ip_v6: MapSpec,
    /// LPM trie, key IPv4 prefix, value `AclEntry`: the allow and deny lists' wider entries.
    pub acl_v4: MapSpec,
    /// LPM trie, key IPv6 prefix, value `AclEntry`.
    pub acl_v6: MapSpec,
    /// Array indexed by `port_key(class, port)`, value `PortRules`: the rules for each port
    /// of TCP and UDP, its class's where no rule names the port, so a packet with ports
    /// needs this one lookup, which the verifier inlines (a hash lookup cost the rate-limit
    /// path 9 ns more). Memory-mapped: the agent writes the 2 MB by plain stores, not
    /// 131,072 system calls.
    pub port_rules: MapSpec,
    /// Array indexed by class, value `PortRules`: rules that cover a whole class.
    pub class_rules: MapSpec,
    /// Array indexed by rule id, value `RuleConfig`.
    pub rules: MapSpec,
    /// LPM trie, key a method code and a request-target prefix (`agent_common::http`),
    /// value `RouteEntry`: HTTP routes.
    pub routes: MapSpec,
    /// Array indexed by HTTP status code, value `StatusRules`: the response rules that
    /// count each status.
    pub status_rules: MapSpec,
}

/// The names of one policy set's maps.
struct PolicySetNames {
    acl_ip_v4: &'static str,
    acl_ip_v6: &'static str,
    acl_v4: &'static str,
    acl_v6: &'static str,
    port_rules: &'static str,
    class_rules: &'static str,
    rules: &'static str,
    routes: &'static str,
    status_rules: &'static str,
}

const fn policy_set(names: PolicySetNames) -> PolicySetMaps {
    let PolicySetNames {
        acl_ip_v4,
        acl_ip_v6,
        acl_v4,
        acl_v6,
        port_rules,
        class_rules,
        rules,
        routes,
        status_rules,
    } = names;
    PolicySetMaps {
        acl_ip_v4: MapSpec {
            flags: BPF_F_NO_PREALLOC,
            ..spec(
                acl_ip_v4,
                MapKind::Hash,
                4,
                size_of::<AclEntry>(),
                Entries::Cidrs,
            )
            .holding(Contents::Policy)
        },
        acl_ip_v6: MapSpec {
            flags: BPF_F_NO_PREALLOC,
            ..spec(
                acl_ip_v6,
                MapKind::Hash,
                16,
                size_of::<AclEntry>(),
                Entries::Cidrs,
            )
            .holding(Contents::Policy)
        },
        acl_v4: spec(
            acl_v4,
            MapKind::LpmTrie,
            LPM_V4_KEY,
            size_of::<AclEntry>(),
            Entries::Cidrs,
        )
        .holding(Contents::Policy),
        acl_v6: spec(
            acl_v6,
            MapKind::LpmTrie,
            LPM_V6_KEY,
            size_of::<AclEntry>(),
            Entries::Cidrs,
        )
        .holding(Contents::Policy),
        port_rules: MapSpec {
            flags: BPF_F_MMAPABLE,
            ..spec(
                port_rules,
                MapKind::Array,
                4,
                size_of::<PortRules>(),
                Entries::Fixed(PORT_RULE_ENTRIES),
            )
            .holding(Contents::Policy)
        },
        class_rules: spec(
            class_rules,
            MapKind::Array,
            4,
            size_of::<PortRules>(),
            Entries::Fixed(CLASS_COUNT),
        )
        .holding(Contents::Policy),
        rules: spec(
            rules,
            MapKind::Array,
            4,
            size_of::<RuleConfig>(),
            Entries::Rules,
        )
        .holding(Contents::Policy),
        routes: spec(
            routes,
            MapKind::LpmTrie,
            4 + ROUTE_KEY_BYTES,
            size_of::<RouteEntry>(),
            Entries::RouteKeys,
        )
        .holding(Contents::Policy),
        status_rules: spec(
            status_rules,
            MapKind::Array,
            4,
            size_of::<StatusRules>(),
            Entries::Fixed(STATUS_CODES),
        )
        .holding(Contents::Policy),
    }
}

pub const POLICY_SETS: [PolicySetMaps; 2] = [
    policy_set(PolicySetNames {
        acl_ip_v4: "ACL_IP_V4_0",
        acl_ip_v6: "ACL_IP_V6_0",
        acl_v4: "ACL_V4_0",
        acl_v6: "ACL_V6_0",
        port_rules: "PORT_RULES_0",
        class_rules: "CLASS_RULES_0",
        rules: "RULES_0",
        routes: "ROUTES_0",
        status_rules: "STATUS_RULES_0",
    }),
    policy_set(PolicySetNames {
        acl_ip_v4: "ACL_IP_V4_1",
        acl_ip_v6: "ACL_IP_V6_1",
        acl_v4: "ACL_V4_1",
        acl_v6: "ACL_V6_1",
        port_rules: "PORT_RULES_1",
        class_rules: "CLASS_RULES_1",
        rules: "RULES_1",
        routes: "ROUTES_1",
        status_rules: "STATUS_RULES_1",
    }),
];

/// Array with one `u32`: 0 or 1, the policy set in force.
pub const GENERATION: MapSpec =
    spec("GENERATION", MapKind::Array, 4, 4, Entries::Fixed(1)).holding(Contents::Policy);
/// LPM trie, key IPv4 prefix, value `BlockEntry`: operator blocks, checked before bans.
pub const BLOCKS_V4: MapSpec = spec(
    "BLOCKS_V4",
    MapKind::LpmTrie,
    LPM_V4_KEY,
    size_of::<BlockEntry>(),
    Entries::Blocks,
);
/// LPM trie, key IPv6 prefix, value `BlockEntry`.
pub const BLOCKS_V6: MapSpec = spec(
    "BLOCKS_V6",
    MapKind::LpmTrie,
    LPM_V6_KEY,
    size_of::<BlockEntry>(),
    Entries::Blocks,
);
/// Hash, key IPv4 address, value `DecisionEntry`: detector decisions on one address
/// (CrowdSec's scope Ip, nearly all of a community blocklist), checked after operator
/// blocks and before escalation bans. A hash lookup costs the same for 100,000 addresses as
/// for one; in a trie of 100,000 addresses each packet walks some 17 nodes, which a flood
/// measured at 0.77 M packets/s against 1.30 M for a one-entry trie (BENCHMARKS.md).
pub const DECISION_IP_V4: MapSpec = MapSpec {
    flags: BPF_F_NO_PREALLOC,
    ..spec(
        "DECISION_IP_V4",
        MapKind::Hash,
        4,
        size_of::<DecisionEntry>(),
        Entries::Decisions,
    )
};
/// Hash, key IPv6 address, value `DecisionEntry`.
pub const DECISION_IP_V6: MapSpec = MapSpec {
    flags: BPF_F_NO_PREALLOC,
    ..spec(
        "DECISION_IP_V6",
        MapKind::Hash,
        16,
        size_of::<DecisionEntry>(),
        Entries::Decisions,
    )
};
/// LPM trie, key IPv4 prefix, value `DecisionEntry`: detector decisions on wider prefixes
/// (scope Range), checked when the source's address has none of its own.
pub const DECISIONS_V4: MapSpec = spec(
    "DECISIONS_V4",
    MapKind::LpmTrie,
    LPM_V4_KEY,
    size_of::<DecisionEntry>(),
    Entries::Decisions,
);
/// LPM trie, key IPv6 prefix, value `DecisionEntry`.
pub const DECISIONS_V6: MapSpec = spec(
    "DECISIONS_V6",
    MapKind::LpmTrie,
    LPM_V6_KEY,
    size_of::<DecisionEntry>(),
    Entries::Decisions,
);
/// LPM trie, key IPv4 prefix of a source group, value `BanEntry`: escalation bans.
pub const BANS_V4: MapSpec = spec(
    "BANS_V4",
    MapKind::LpmTrie,
    LPM_V4_KEY,
    size_of::<BanEntry>(),
    Entries::Bans,
);
/// LPM trie, key IPv6 prefix of a source group, value `BanEntry`.
pub const BANS_V6: MapSpec = spec(
    "BANS_V6",
    MapKind::LpmTrie,
    LPM_V6_KEY,
    size_of::<BanEntry>(),
    Entries::Bans,
);
/// LRU hash, key `BucketKey` (a rule and a wider source group), value `BanGroup`: bans
/// counted for ban aggregation. Losing a count only delays a wider ban.
pub const BAN_GROUPS: MapSpec = spec(
    "BAN_GROUPS",
    MapKind::LruHash,
    size_of::<BucketKey>(),
    size_of::<BanGroup>(),
    Entries::Bans,
)
.holding(Contents::Disposable);
/// Array of `BucketSet`: per-source token buckets (see `buckets`). Mappable, so that the
/// agent counts them without a system call per set.
pub const BUCKETS: MapSpec = MapSpec {
    flags: BPF_F_MMAPABLE,
    ..spec(
        "BUCKETS",
        MapKind::Array,
        4,
        size_of::<BucketSet>(),
        Entries::BucketSets,
    )
    .holding(Contents::Disposable)
};
/// Array of `u64`, `admission::SLOTS` of them: first packets of source groups that have no
/// bucket yet (see `admission`).
pub const ADMISSION: MapSpec = spec(
    "ADMISSION",
    MapKind::Array,
    4,
    8,
    Entries::Fixed(crate::admission::SLOTS),
)
.holding(Contents::Disposable);
/// Per-CPU array with one `RouteLookup`: where a route lookup key is built.
pub const ROUTE_SCRATCH: MapSpec = spec(
    "ROUTE_SCRATCH",
    MapKind::PerCpuArray,
    4,
    size_of::<RouteLookup>(),
    Entries::Fixed(1),
)
.holding(Contents::Disposable);
/// LRU hash, key `FlowKey`, value the `bpf_ktime_get_coarse_ns` time a refused request's
/// connection was reset: its retransmissions then go to the server without their payload,
/// for the server (which has closed the connection) to answer with a RST.
pub const RESET_FLOWS: MapSpec = spec(
    "RESET_FLOWS",
    MapKind::LruHash,
    size_of::<FlowKey>(),
    8,
    Entries::Fixed(RESET_FLOWS_ENTRIES),
)
.holding(Contents::Disposable);
/// LRU hash, key `FlowKey` (the client's side first, as its requests carry it), value
/// `Accepted`: the connections to HTTP ports the server accepted. Only their responses
/// count toward response rules, so bytes a local process writes from an HTTP port's number
/// on a connection it opened ban nobody.
pub const ACCEPTED: MapSpec = spec(
    "ACCEPTED",
    MapKind::LruHash,
    size_of::<FlowKey>(),
    size_of::<Accepted>(),
    Entries::Fixed(ACCEPTED_ENTRIES),
)
.holding(Contents::Disposable);
/// LRU hash, key `FlowKey`, value `Charged`: the request a rate-limited route last took a
/// token for on each connection, so that its retransmission takes none.
pub const CHARGED: MapSpec = spec(
    "CHARGED",
    MapKind::LruHash,
    size_of::<FlowKey>(),
    size_of::<Charged>(),
    Entries::Fixed(RESET_FLOWS_ENTRIES),
)
.holding(Contents::Disposable);
/// Per-CPU array of `u64`, laid out as the `COUNTER_*` constants say.
pub const COUNTERS: MapSpec = spec(
    "COUNTERS",
    MapKind::PerCpuArray,
    4,
    8,
    Entries::Fixed(COUNTER_SLOTS),
)
.holding(Contents::Disposable);
/// Per-CPU array indexed by rule id, value `RuleCounters`.
pub const RULE_COUNTERS: MapSpec = spec(
    "RULE_COUNTERS",
    MapKind::PerCpuArray,
    4,
    size_of::<RuleCounters>(),
    Entries::Rules,
)
.holding(Contents::Disposable);
/// Per-CPU array of `IfaceCounters`, indexed by `ifindex % IFACE_SLOTS`.
pub const IFACE_COUNTERS: MapSpec = spec(
    "IFACE_COUNTERS",
    MapKind::PerCpuArray,
    4,
    size_of::<IfaceCounters>(),
    Entries::Fixed(IFACE_SLOTS),
)
.holding(Contents::Disposable);
/// Array of `u32` bits (`HAS_V4`, `HAS_V6`): which address hash maps hold entries. Entries
/// 0 and 1 are the policy sets' (`ACL_IP_*`), entry `DECISION_ADDRESSES` the decisions'
/// (`DECISION_IP_*`). A hash lookup reads a bucket even in an empty map, and with random
/// sources that is a cache and TLB miss: a spoofed flood measured the program at 1,008 ns a
/// run with the two lookups always made, 603 ns without them.
pub const HAS_ADDRESSES: MapSpec = spec("HAS_ADDRESSES", MapKind::Array, 4, 4, Entries::Fixed(3));
/// Bits of a `HAS_ADDRESSES` entry.
pub const HAS_V4: u32 = 1;
pub const HAS_V6: u32 = 2;
/// The `HAS_ADDRESSES` entry of the decision maps.
pub const DECISION_ADDRESSES: u32 = 2;
/// Array of `u32`, one entry for each pair of source tries that is often empty
/// (`EMPTY_BLOCKS`, `EMPTY_DECISION_RANGES`, `EMPTY_BANS`): `MARKED_EMPTY` when the agent
/// found both empty, and the kernel skips their lookups; 0, a fresh map's value, when it
/// must look. The agent clears a mark before it inserts and sets it only after finding the
/// tries empty, then looks once more; the kernel, which makes bans, clears the ban mark
/// after each. A lookup in an empty trie still costs a call: the three cost 9 ns of the
/// 56 ns rate-limit path.
pub const EMPTY_TRIES: MapSpec =
    spec("EMPTY_TRIES", MapKind::Array, 4, 4, Entries::Fixed(3)).holding(Contents::Disposable);
/// Entries of `EMPTY_TRIES`.
pub const EMPTY_BLOCKS: u32 = 0;
pub const EMPTY_DECISION_RANGES: u32 = 1;
pub const EMPTY_BANS: u32 = 2;
/// The value of an `EMPTY_TRIES` entry whose tries the agent found empty.
pub const MARKED_EMPTY: u32 = 1;
/// Array with one `Settings`.
pub const SETTINGS: MapSpec = spec(
    "SETTINGS",
    MapKind::Array,
    4,
    size_of::<Settings>(),
    Entries::Fixed(1),
)
.holding(Contents::Disposable);
/// Per-CPU array with one `EventBudget`.
pub const EVENT_BUDGET: MapSpec = spec(
    "EVENT_BUDGET",
    MapKind::PerCpuArray,
    4,
    size_of::<EventBudget>(),
    Entries::Fixed(1),
)
.holding(Contents::Disposable);
/// Per-CPU array of `u64`: malformed frames by `MalformedCause` code.
pub const MALFORMED: MapSpec = spec(
    "MALFORMED",
    MapKind::PerCpuArray,
    4,
    8,
    Entries::Fixed(MALFORMED_SLOTS),
)
.holding(Contents::Disposable);
/// Ring buffer of `Event` records; its size is in bytes, and it has no keys or values.
pub const EVENTS: MapSpec = spec(
    "EVENTS",
    MapKind::RingBuf,
    0,
    0,
    Entries::Fixed(EVENTS_BYTES),
)
.holding(Contents::Disposable);

/// Every map of the agent's object.
pub const ALL: [MapSpec; 43] = [
    POLICY_SETS[0].acl_ip_v4,
    POLICY_SETS[0].acl_ip_v6,
    POLICY_SETS[0].acl_v4,
    POLICY_SETS[0].acl_v6,
    POLICY_SETS[0].port_rules,
    POLICY_SETS[0].class_rules,
    POLICY_SETS[0].rules,
    POLICY_SETS[0].routes,
    POLICY_SETS[0].status_rules,
    POLICY_SETS[1].acl_ip_v4,
    POLICY_SETS[1].acl_ip_v6,
    POLICY_SETS[1].acl_v4,
    POLICY_SETS[1].acl_v6,
    POLICY_SETS[1].port_rules,
    POLICY_SETS[1].class_rules,
    POLICY_SETS[1].rules,
    POLICY_SETS[1].routes,
    POLICY_SETS[1].status_rules,
    GENERATION,
    BLOCKS_V4,
    BLOCKS_V6,
    DECISION_IP_V4,
    DECISION_IP_V6,
    DECISIONS_V4,
    DECISIONS_V6,
    BANS_V4,
    BANS_V6,
    BAN_GROUPS,
    BUCKETS,
    ADMISSION,
    ROUTE_SCRATCH,
    RESET_FLOWS,
    CHARGED,
    ACCEPTED,
    COUNTERS,
    RULE_COUNTERS,
    IFACE_COUNTERS,
    SETTINGS,
    HAS_ADDRESSES,
    EMPTY_TRIES,
    EVENT_BUDGET,
    MALFORMED,
    EVENTS,
];

// The kernel keeps 16 bytes for a map name, NUL included.
const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].name.len() <= 15);
        i += 1;
    }
};
// A ring buffer record must fit the ring many times over.
const _: () = assert!(size_of::<Event>() as u32 * 1024 <= EVENTS_BYTES);

/// The rule id blocks are counted and reported under: an inert rule (no rate) that is in
/// every policy set. Fixed whatever `capacity.rules` is: agents before `BLOCKS_V4` stored
/// blocks as bans under this id, and named rules take the ids around it.
pub const BLOCK_RULE: u32 = MIN_RULE_IDS - 1;
/// The rule id evasive HTTP requests (`Reason::HttpEvasion`) are counted and reported
/// under, named `http-evasion`; its configuration holds only the mode `http.strict` gives.
pub const EVASION_RULE: u32 = MIN_RULE_IDS - 2;

const _: () = assert!(BLOCK_RULE < MIN_RULE_IDS && EVASION_RULE < MIN_RULE_IDS);

/// Whether `id` may be a named rule's.
pub const fn is_named_rule_id(id: u32) -> bool {
    id != 0 && id != BLOCK_RULE && id != EVASION_RULE
}
/// The epoch of `BLOCK_RULE`, which never changes; rule epochs count up from 1. Agents
/// before `BLOCKS_V4` kept blocks in the ban maps under this rule and epoch; the agent moves
/// such entries into the block maps when it takes their maps over.
pub const BLOCK_EPOCH: u32 = u32::MAX;

/// `COUNTERS` layout: `[0, REASON_SLOTS)` counts final verdicts by `Reason` code;
/// `[REASON_SLOTS, 2 * REASON_SLOTS)` counts shadow-mode hits (would have dropped) by
/// `Reason` code; the slots after that are the single counters below.
pub const REASON_SLOTS: u32 = 16;
/// Events written to the ring buffer.
pub const COUNTER_EVENTS_WRITTEN: u32 = 2 * REASON_SLOTS;
/// Events not written because the per-second budget was spent.
pub const COUNTER_EVENTS_SUPPRESSED: u32 = COUNTER_EVENTS_WRITTEN + 1;
/// Events not written because the ring buffer was full (the agent is not keeping up).
pub const COUNTER_EVENTS_LOST: u32 = COUNTER_EVENTS_WRITTEN + 2;
/// Escalation bans that could not be stored because `BANS_*` was full.
pub const COUNTER_BANS_FAILED: u32 = COUNTER_EVENTS_WRITTEN + 3;
/// Token buckets created.
pub const COUNTER_BUCKETS_CREATED: u32 = COUNTER_EVENTS_WRITTEN + 4;
/// Packets of sources not given a bucket yet: first packets within a rule's burst window,
/// which is every packet of a flood of one-packet (spoofed) sources.
pub const COUNTER_UNADMITTED: u32 = COUNTER_EVENTS_WRITTEN + 5;
/// Token buckets a new one replaced in a full set, counted as it happens.
pub const COUNTER_BUCKET_EVICTIONS: u32 = COUNTER_EVENTS_WRITTEN + 6;
pub const COUNTER_SLOTS: u32 = COUNTER_EVENTS_WRITTEN + 7;
/// Slots of `MALFORMED`, one per `MalformedCause` code.
pub const MALFORMED_SLOTS: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn entries_follow_the_capacity() {
        let capacity = Capacity {
            sources: 10,
            cidrs: 20,
            bans: 30,
            blocks: 40,
            rules: 5000,
            decisions: 50,
        };
        assert_eq!(
            BUCKETS.max_entries(&capacity),
            4,
            "sets of 4 for 10 sources"
        );
        assert_eq!(POLICY_SETS[1].acl_v6.max_entries(&capacity), 40);
        assert_eq!(BANS_V4.max_entries(&capacity), 30);
        assert_eq!(BLOCKS_V6.max_entries(&capacity), 40);
        assert_eq!(DECISIONS_V4.max_entries(&capacity), 50);
        assert_eq!(RULE_COUNTERS.max_entries(&capacity), 5003);
        assert_eq!(POLICY_SETS[0].rules.max_entries(&capacity), 5003);
        assert_eq!(POLICY_SETS[1].routes.max_entries(&capacity), 135_000);
        let huge = Capacity {
            sources: 1,
            cidrs: u32::MAX,
            bans: 1,
            blocks: 1,
            rules: 1,
            decisions: 1,
        };
        assert_eq!(POLICY_SETS[0].acl_v4.max_entries(&huge), u32::MAX);
        // The reserved ids are in the table with the fewest rules.
        assert_eq!(RULE_COUNTERS.max_entries(&huge), MIN_RULE_IDS);
    }
}
