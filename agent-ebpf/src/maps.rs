//! The maps the programs share with the agent. Names match `agent_common::maps`, which
//! documents each key and value. The capacities written here are placeholders for
//! loaders that do not size them (tests); the agent sizes the policy-dependent ones from the
//! policy's `capacity` section before loading.

use agent_common::{
    AclEntry, BanEntry, Bucket, BucketKey, CLASS_COUNT, EVENTS_BYTES, EventBudget, IfaceCounters,
    MAX_PORT_ENTRIES, MAX_RULES, PortRules, RuleConfig, RuleCounters, Settings,
    maps::COUNTER_SLOTS,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

// LPM keys are the prefix bytes in network order: a `u32` or `[u32; 4]` read straight from
// the packet has exactly that layout in memory.
//
// Policy maps come in two sets (suffix _0 and _1); `policy_set` picks the one GENERATION
// names, once per packet.
#[map]
pub static ACL_V4_0: LpmTrie<u32, AclEntry> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static ACL_V4_1: LpmTrie<u32, AclEntry> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static ACL_V6_0: LpmTrie<[u32; 4], AclEntry> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static ACL_V6_1: LpmTrie<[u32; 4], AclEntry> = LpmTrie::with_max_entries(1024, 0);

/// Not preallocated: a policy rarely uses more than a handful of the 196,608 possible keys.
#[map]
pub static PORT_RULES_0: HashMap<u32, PortRules> =
    HashMap::with_max_entries(MAX_PORT_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
#[map]
pub static PORT_RULES_1: HashMap<u32, PortRules> =
    HashMap::with_max_entries(MAX_PORT_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
#[map]
pub static CLASS_RULES_0: Array<PortRules> = Array::with_max_entries(CLASS_COUNT, 0);
#[map]
pub static CLASS_RULES_1: Array<PortRules> = Array::with_max_entries(CLASS_COUNT, 0);
#[map]
pub static RULES_0: Array<RuleConfig> = Array::with_max_entries(MAX_RULES, 0);
#[map]
pub static RULES_1: Array<RuleConfig> = Array::with_max_entries(MAX_RULES, 0);
#[map]
pub static GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static BANS_V4: LpmTrie<u32, BanEntry> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static BANS_V6: LpmTrie<[u32; 4], BanEntry> = LpmTrie::with_max_entries(1024, 0);

#[map]
pub static BUCKETS: LruHashMap<BucketKey, Bucket> = LruHashMap::with_max_entries(1024, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
#[map]
pub static RULE_COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map]
pub static IFACE_COUNTERS: PerCpuArray<IfaceCounters> =
    PerCpuArray::with_max_entries(agent_common::maps::IFACE_SLOTS, 0);
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
