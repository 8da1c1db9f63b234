//! Map names and fixed capacities. Names are at most 15 characters: the kernel keeps 16
//! bytes including the NUL. Capacities that depend on the policy are set by the agent at
//! load time from the policy's `capacity` section.

// The policy maps come in two sets, 0 and 1. Packets are judged by the set `GENERATION`
// names; the agent writes the other set and then switches, so every packet sees one whole
// policy. Each constant below lists the names of a map in set 0 and set 1.

/// LPM trie, key `[u8; 4]` (IPv4 prefix), value `AclEntry`: the allow and deny lists.
pub const ACL_V4: [&str; 2] = ["ACL_V4_0", "ACL_V4_1"];
/// LPM trie, key `[u8; 16]` (IPv6 prefix), value `AclEntry`.
pub const ACL_V6: [&str; 2] = ["ACL_V6_0", "ACL_V6_1"];
/// Hash, key `port_key(class, port)`, value `PortRules`: rules scoped to ports.
pub const PORT_RULES: [&str; 2] = ["PORT_RULES_0", "PORT_RULES_1"];
/// Array indexed by class, value `PortRules`: rules that cover a whole class.
pub const CLASS_RULES: [&str; 2] = ["CLASS_RULES_0", "CLASS_RULES_1"];
/// Array indexed by rule id, value `RuleConfig`.
pub const RULES: [&str; 2] = ["RULES_0", "RULES_1"];
/// Array with one `u32`: 0 or 1, the policy set in force.
pub const GENERATION: &str = "GENERATION";

/// LPM trie, key IPv4 prefix of a source group, value `BanEntry`.
pub const BANS_V4: &str = "BANS_V4";
/// LPM trie, key IPv6 prefix of a source group, value `BanEntry`.
pub const BANS_V6: &str = "BANS_V6";
/// LRU hash, key `BucketKey`, value `Bucket`: per-source token buckets.
pub const BUCKETS: &str = "BUCKETS";
/// Per-CPU array of `u64`, laid out as described by the `COUNTER_*` constants.
pub const COUNTERS: &str = "COUNTERS";
/// Per-CPU array indexed by rule id, value `RuleCounters`.
pub const RULE_COUNTERS: &str = "RULE_COUNTERS";
/// Per-CPU array of `IfaceCounters`, indexed by `ifindex % IFACE_SLOTS`.
pub const IFACE_COUNTERS: &str = "IFACE_COUNTERS";
/// Interfaces are counted in this many slots; the agent warns if two attached interfaces
/// share one.
pub const IFACE_SLOTS: u32 = 256;
/// Array with one `Settings`.
pub const SETTINGS: &str = "SETTINGS";
/// Per-CPU array with one `EventBudget`.
pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
/// Ring buffer of `Event` records.
pub const EVENTS: &str = "EVENTS";

/// Rule ids are indexes into `RULES` and `RULE_COUNTERS`; id 0 is never used.
pub const MAX_RULES: u32 = 1024;
/// The rule id of bans made with `portcullis block`: an inert rule (no rate) that is in
/// every policy set, so the kernel treats those bans like escalation bans.
pub const BLOCK_RULE: u32 = MAX_RULES - 1;
/// The epoch of `BLOCK_RULE`, which never changes; rule epochs count up from 1.
pub const BLOCK_EPOCH: u32 = u32::MAX;
/// Every (class, port) pair there is: rules with port ranges expand into it.
pub const MAX_PORT_ENTRIES: u32 = 3 * 65536;
/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// `COUNTERS` layout: `[0, REASON_SLOTS)` counts final verdicts by `Reason`;
/// `[REASON_SLOTS, 2 * REASON_SLOTS)` counts shadow-mode hits (would have dropped) by `Reason`;
/// the slots after that are the single counters below.
pub const REASON_SLOTS: u32 = 16;
pub const COUNTER_EVENTS_WRITTEN: u32 = 2 * REASON_SLOTS;
/// Events not written because the per-second budget was spent.
pub const COUNTER_EVENTS_SUPPRESSED: u32 = COUNTER_EVENTS_WRITTEN + 1;
/// Events not written because the ring buffer was full (the agent is not keeping up).
pub const COUNTER_EVENTS_LOST: u32 = COUNTER_EVENTS_WRITTEN + 2;
/// Escalation bans that could not be stored because `BANS_*` was full.
pub const COUNTER_BANS_FAILED: u32 = COUNTER_EVENTS_WRITTEN + 3;
/// Token buckets created; minus the buckets in the LRU map, the number it evicted.
pub const COUNTER_BUCKETS_CREATED: u32 = COUNTER_EVENTS_WRITTEN + 4;
pub const COUNTER_SLOTS: u32 = COUNTER_EVENTS_WRITTEN + 5;
