//! The maps the programs share with the agent, declared from the table in
//! `agent_common::maps`: each static's name is the spec's name (a test checks the built
//! object against the table), and each takes its entry count and flags from the spec. The
//! agent resizes the maps the policy sizes before loading.

use agent_common::{
    AclEntry, BanEntry, BanGroup, BlockEntry, BucketKey, DecisionEntry, EventBudget, IfaceCounters,
    PortRules, RuleConfig, RuleCounters, Settings,
    buckets::BucketSet,
    http::{Accepted, Charged, FlowKey, ROUTE_KEY_BYTES, RouteEntry, RouteLookup, StatusRules},
    maps::{self as spec, MapSpec, POLICY_SETS, PolicySetMaps},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

const fn entries(spec: MapSpec) -> u32 {
    spec.declared_entries()
}

// LPM keys are the prefix bytes in network order: a `u32` or `[u32; 4]` read straight from
// the packet has exactly that layout in memory.
//
// Policy maps come in two sets (suffix _0 and _1); `policy_set` picks the one GENERATION
// names, once per packet.
const SET_0: PolicySetMaps = POLICY_SETS[0];
const SET_1: PolicySetMaps = POLICY_SETS[1];

#[map]
pub static ACL_IP_V4_0: HashMap<u32, AclEntry> =
    HashMap::with_max_entries(entries(SET_0.acl_ip_v4), SET_0.acl_ip_v4.flags);
#[map]
pub static ACL_IP_V4_1: HashMap<u32, AclEntry> =
    HashMap::with_max_entries(entries(SET_1.acl_ip_v4), SET_1.acl_ip_v4.flags);
#[map]
pub static ACL_IP_V6_0: HashMap<[u32; 4], AclEntry> =
    HashMap::with_max_entries(entries(SET_0.acl_ip_v6), SET_0.acl_ip_v6.flags);
#[map]
pub static ACL_IP_V6_1: HashMap<[u32; 4], AclEntry> =
    HashMap::with_max_entries(entries(SET_1.acl_ip_v6), SET_1.acl_ip_v6.flags);
#[map]
pub static ACL_V4_0: LpmTrie<u32, AclEntry> =
    LpmTrie::with_max_entries(entries(SET_0.acl_v4), SET_0.acl_v4.flags);
#[map]
pub static ACL_V4_1: LpmTrie<u32, AclEntry> =
    LpmTrie::with_max_entries(entries(SET_1.acl_v4), SET_1.acl_v4.flags);
#[map]
pub static ACL_V6_0: LpmTrie<[u32; 4], AclEntry> =
    LpmTrie::with_max_entries(entries(SET_0.acl_v6), SET_0.acl_v6.flags);
#[map]
pub static ACL_V6_1: LpmTrie<[u32; 4], AclEntry> =
    LpmTrie::with_max_entries(entries(SET_1.acl_v6), SET_1.acl_v6.flags);
#[map]
pub static PORT_RULES_0: Array<PortRules> =
    Array::with_max_entries(entries(SET_0.port_rules), SET_0.port_rules.flags);
#[map]
pub static PORT_RULES_1: Array<PortRules> =
    Array::with_max_entries(entries(SET_1.port_rules), SET_1.port_rules.flags);
#[map]
pub static CLASS_RULES_0: Array<PortRules> =
    Array::with_max_entries(entries(SET_0.class_rules), SET_0.class_rules.flags);
#[map]
pub static CLASS_RULES_1: Array<PortRules> =
    Array::with_max_entries(entries(SET_1.class_rules), SET_1.class_rules.flags);
#[map]
pub static RULES_0: Array<RuleConfig> =
    Array::with_max_entries(entries(SET_0.rules), SET_0.rules.flags);
#[map]
pub static RULES_1: Array<RuleConfig> =
    Array::with_max_entries(entries(SET_1.rules), SET_1.rules.flags);
#[map]
pub static ROUTES_0: LpmTrie<[u8; ROUTE_KEY_BYTES], RouteEntry> =
    LpmTrie::with_max_entries(entries(SET_0.routes), SET_0.routes.flags);
#[map]
pub static ROUTES_1: LpmTrie<[u8; ROUTE_KEY_BYTES], RouteEntry> =
    LpmTrie::with_max_entries(entries(SET_1.routes), SET_1.routes.flags);
#[map]
pub static STATUS_RULES_0: Array<StatusRules> =
    Array::with_max_entries(entries(SET_0.status_rules), SET_0.status_rules.flags);
#[map]
pub static STATUS_RULES_1: Array<StatusRules> =
    Array::with_max_entries(entries(SET_1.status_rules), SET_1.status_rules.flags);
#[map]
pub static GENERATION: Array<u32> =
    Array::with_max_entries(entries(spec::GENERATION), spec::GENERATION.flags);

#[map]
pub static BLOCKS_V4: LpmTrie<u32, BlockEntry> =
    LpmTrie::with_max_entries(entries(spec::BLOCKS_V4), spec::BLOCKS_V4.flags);
#[map]
pub static BLOCKS_V6: LpmTrie<[u32; 4], BlockEntry> =
    LpmTrie::with_max_entries(entries(spec::BLOCKS_V6), spec::BLOCKS_V6.flags);

#[map]
pub static DECISION_IP_V4: HashMap<u32, DecisionEntry> =
    HashMap::with_max_entries(entries(spec::DECISION_IP_V4), spec::DECISION_IP_V4.flags);
#[map]
pub static DECISION_IP_V6: HashMap<[u32; 4], DecisionEntry> =
    HashMap::with_max_entries(entries(spec::DECISION_IP_V6), spec::DECISION_IP_V6.flags);
#[map]
pub static DECISIONS_V4: LpmTrie<u32, DecisionEntry> =
    LpmTrie::with_max_entries(entries(spec::DECISIONS_V4), spec::DECISIONS_V4.flags);
#[map]
pub static DECISIONS_V6: LpmTrie<[u32; 4], DecisionEntry> =
    LpmTrie::with_max_entries(entries(spec::DECISIONS_V6), spec::DECISIONS_V6.flags);

#[map]
pub static BANS_V4: LpmTrie<u32, BanEntry> =
    LpmTrie::with_max_entries(entries(spec::BANS_V4), spec::BANS_V4.flags);
#[map]
pub static BANS_V6: LpmTrie<[u32; 4], BanEntry> =
    LpmTrie::with_max_entries(entries(spec::BANS_V6), spec::BANS_V6.flags);

#[map]
pub static BAN_GROUPS: LruHashMap<BucketKey, BanGroup> =
    LruHashMap::with_max_entries(entries(spec::BAN_GROUPS), spec::BAN_GROUPS.flags);

#[map]
pub static BUCKETS: Array<BucketSet> =
    Array::with_max_entries(entries(spec::BUCKETS), spec::BUCKETS.flags);

#[map]
pub static ADMISSION: Array<u64> =
    Array::with_max_entries(entries(spec::ADMISSION), spec::ADMISSION.flags);

#[map]
pub static ROUTE_SCRATCH: PerCpuArray<RouteLookup> =
    PerCpuArray::with_max_entries(entries(spec::ROUTE_SCRATCH), spec::ROUTE_SCRATCH.flags);

#[map]
pub static RESET_FLOWS: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(entries(spec::RESET_FLOWS), spec::RESET_FLOWS.flags);

#[map]
pub static CHARGED: LruHashMap<FlowKey, Charged> =
    LruHashMap::with_max_entries(entries(spec::CHARGED), spec::CHARGED.flags);

#[map]
pub static ACCEPTED: LruHashMap<FlowKey, Accepted> =
    LruHashMap::with_max_entries(entries(spec::ACCEPTED), spec::ACCEPTED.flags);

#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(entries(spec::COUNTERS), spec::COUNTERS.flags);
#[map]
pub static RULE_COUNTERS: PerCpuArray<RuleCounters> =
    PerCpuArray::with_max_entries(entries(spec::RULE_COUNTERS), spec::RULE_COUNTERS.flags);
#[map]
pub static IFACE_COUNTERS: PerCpuArray<IfaceCounters> =
    PerCpuArray::with_max_entries(entries(spec::IFACE_COUNTERS), spec::IFACE_COUNTERS.flags);
#[map]
pub static HAS_ADDRESSES: Array<u32> =
    Array::with_max_entries(entries(spec::HAS_ADDRESSES), spec::HAS_ADDRESSES.flags);
#[map]
pub static EMPTY_TRIES: Array<u32> =
    Array::with_max_entries(entries(spec::EMPTY_TRIES), spec::EMPTY_TRIES.flags);
#[map]
pub static SETTINGS: Array<Settings> =
    Array::with_max_entries(entries(spec::SETTINGS), spec::SETTINGS.flags);
#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> =
    PerCpuArray::with_max_entries(entries(spec::EVENT_BUDGET), spec::EVENT_BUDGET.flags);
#[map]
pub static MALFORMED: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(entries(spec::MALFORMED), spec::MALFORMED.flags);
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(entries(spec::EVENTS), spec::EVENTS.flags);
