//! Types and constants shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Everything here crosses the kernel/user boundary through BPF maps or the ring buffer, so
//! every type is `#[repr(C)]`, `Copy`, built from fixed-width integers, with its padding
//! written out and its size asserted at compile time.
#![cfg_attr(not(test), no_std)]

pub mod admission;
pub mod buckets;
pub mod decision;
pub mod event;
pub mod http;
pub mod malformed;
pub mod maps;
pub mod mode;
pub mod reason;

pub use event::{Event, EventAction};
pub use malformed::MalformedCause;
pub use maps::*;
pub use mode::Mode;
pub use reason::{Action, Reason};

/// Traffic classes that rate-limit rules are scoped by. ICMP covers ICMPv4 and ICMPv6.
pub const CLASS_TCP: u8 = 0;
pub const CLASS_UDP: u8 = 1;
pub const CLASS_ICMP: u8 = 2;
/// Any other IP protocol (GRE, ESP, SCTP...).
pub const CLASS_OTHER: u8 = 3;
pub const CLASS_COUNT: u32 = 4;

/// Key of `PORT_RULES`: a class and a destination port.
#[inline(always)]
pub const fn port_key(class: u8, port: u16) -> u32 {
    ((class as u32) << 16) | port as u32
}

/// The rate-limit rules that apply to one (class, port) or to a whole class.
/// Rule ids start at 1; 0 means "no rule of this kind".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Rule that counts every packet.
    pub packet_rule: u32,
    /// Rule that counts new TCP connections (SYN without ACK).
    pub connection_rule: u32,
    /// 1 when the port carries plaintext HTTP (`http.ports`): request starts on it are
    /// looked up in the route trie.
    pub http: u32,
}

/// One rate-limit rule as the kernel sees it, indexed by rule id in `RULES`.
///
/// The token bucket is kept in nanoseconds so the per-packet path only adds, compares and
/// subtracts: a packet costs `interval_ns` (1 s / rate), and a full bucket holds
/// `capacity_ns` (burst * interval_ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleConfig {
    pub interval_ns: u64,
    pub capacity_ns: u64,
    /// Over-limit packets are counted in windows of this length for escalation.
    pub ban_window_ns: u64,
    /// Length of an escalation ban; 0 disables escalation.
    pub ban_for_ns: u64,
    /// Over-limit packets within one window that trigger a ban.
    pub ban_after: u32,
    /// A `Mode` code.
    pub mode: u32,
    /// Changes whenever the rule's definition changes; buckets and bans made under an older
    /// epoch are ignored, so a changed rule starts fresh while an unchanged one keeps state.
    pub epoch: u32,
    /// Sources are grouped by these prefixes: one bucket per group.
    pub prefix_v4: u32,
    pub prefix_v6: u32,
    /// Network-order masks for the prefixes above, precomputed so the kernel only ANDs.
    pub mask_v4: u32,
    pub mask_v6: [u32; 4],
    /// Ban aggregation (`ban.aggregate`): this many bans of the rule inside one wider group
    /// (within a ban's duration) and the next ban is of the wider group; 0 never widens.
    pub aggregate_after: u32,
    /// The wider prefixes, 0 for a family that does not widen, and their masks.
    pub aggregate_prefix_v4: u32,
    pub aggregate_prefix_v6: u32,
    pub aggregate_mask_v4: u32,
    pub aggregate_mask_v6: [u32; 4],
    /// `CLOCK_COARSE` when the rule's buckets read the coarse clock (the time of the last
    /// tick) rather than the precise one, which costs tens of nanoseconds a packet; the
    /// agent chooses it where a tick is small beside the rule's burst.
    pub clock: u32,
    /// The coarse clock's step (the kernel's tick) in ns, 0 if unknown: a bucket more
    /// than two ticks from having room refuses without reading the precise clock.
    pub tick_ns: u32,
}

/// `RuleConfig::clock`: the precise clock (the default) or the coarse one.
pub const CLOCK_PRECISE: u32 = 0;
pub const CLOCK_COARSE: u32 = 1;

/// Value of `ACL_V4` / `ACL_V6`: an allow entry or a deny entry. Both lists share one trie,
/// so one longest-prefix lookup answers both; validation refuses a deny entry inside an
/// allow entry, so where both match the allow entry is always the longer prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclEntry {
    /// Rule id a deny entry is counted and reported under; 0 for allow entries.
    pub rule: u32,
    /// `ACL_ALLOW`, or for a deny entry a `Mode` code.
    pub mode: u32,
}

/// `AclEntry::mode` of an allow entry; not a `Mode` code (a test in `mode` checks).
pub const ACL_ALLOW: u32 = 2;

/// Value of `BLOCKS_V4` / `BLOCKS_V6`: an operator's block (`portcullis block`) of a
/// prefix. Always enforced, and checked before escalation bans, which it never shares a map
/// with: a ban cannot hide a block or take its room.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) time at which the block ends; `u64::MAX` for a
    /// block until lifted.
    pub expires_ns: u64,
}

/// Value of `DECISIONS_V4` / `DECISIONS_V6`: a detector's ban of a prefix (a CrowdSec
/// decision), in maps of their own that the agent keeps in step with the detector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecisionEntry {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) time at which the decision ends.
    pub expires_ns: u64,
    /// Where the decision came from (`decision::Origin` code): events name it.
    pub origin: u32,
    pub _pad: u32,
}

impl DecisionEntry {
    pub const fn new(expires_ns: u64, origin: decision::Origin) -> Self {
        Self {
            expires_ns,
            origin: origin.code(),
            _pad: 0,
        }
    }
}

/// Value of `BANS_V4` / `BANS_V6`: a temporary ban of a source group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) time at which the ban ends.
    pub expires_ns: u64,
    /// The rule that escalated to this ban; its current mode applies.
    pub rule: u32,
    /// Epoch of that rule when the ban was made; a ban from an older epoch is void.
    pub epoch: u32,
}

/// A bucket's owner in `BUCKETS` (see `buckets`): one token bucket per rule and source group.
/// IPv4 groups are stored as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub rule: u32,
    pub addr: [u32; 4],
}

/// A bucket of `BUCKETS` (see `buckets`): a rule's limit for one source group, kept as a
/// GCRA theoretical arrival time so that one compare-and-exchange of one word takes a token.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// The time at which the bucket is full again; a packet passes when, after adding its
    /// cost (`interval_ns`), this lies at most `capacity_ns` ahead of now.
    pub tat_ns: u64,
    pub _reserved: u64,
    /// Start of the current escalation window.
    pub window_start_ns: u64,
    /// Over-limit packets in the current window.
    pub excess: u32,
    /// `RuleConfig::epoch` this bucket was made under.
    pub epoch: u32,
}

/// Value of `BAN_GROUPS`, keyed like a bucket (a rule and a source group, here the wider
/// group of ban aggregation): the bans the rule made inside the group lately.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanGroup {
    /// Start of the count; it restarts once a ban's duration has passed.
    pub window_start_ns: u64,
    pub bans: u32,
    /// `RuleConfig::epoch` the count was made under.
    pub epoch: u32,
}

/// Per-rule packet counters, a per-CPU array indexed by rule id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// Matched and passed (within the limit); for a response rule, responses counted.
    pub passed: u64,
    /// Dropped by this rule (enforce mode).
    pub dropped: u64,
    /// Would have been dropped (shadow mode); these packets passed.
    pub shadowed: u64,
}

/// Packets seen on one interface, a per-CPU array slot of `IFACE_COUNTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub passed: u64,
    pub dropped: u64,
}

/// Global settings, entry 0 of `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Ring-buffer events each CPU may write per second; the rest are counted as suppressed.
    pub events_per_cpu_per_sec: u32,
    /// `BUCKETS`' set count less one (`buckets::sets`).
    pub bucket_set_mask: u32,
}

/// Per-CPU state of the event budget, entry 0 of `EVENT_BUDGET`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub used: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PortRules>() == 12);
const _: () = assert!(core::mem::size_of::<RuleConfig>() == 112);
const _: () = assert!(core::mem::size_of::<AclEntry>() == 8);
const _: () = assert!(core::mem::size_of::<BanEntry>() == 16);
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 8);
const _: () = assert!(core::mem::size_of::<DecisionEntry>() == 16);
const _: () = assert!(core::mem::size_of::<BucketKey>() == 20);
const _: () = assert!(core::mem::size_of::<Bucket>() == 32);
const _: () = assert!(core::mem::size_of::<BanGroup>() == 16);
const _: () = assert!(core::mem::size_of::<http::RouteEntry>() == 8);
const _: () = assert!(core::mem::size_of::<http::RouteLookup>() == 200);
const _: () = assert!(core::mem::size_of::<http::FlowKey>() == 36);
// The kernel counts `excess` by compare-and-exchange of the aligned word it shares with
// `epoch` (excess in the low half, little-endian).
const _: () = assert!(core::mem::offset_of!(Bucket, excess) == 24);
const _: () = assert!(core::mem::offset_of!(Bucket, epoch) == 28);
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 24);
const _: () = assert!(core::mem::size_of::<IfaceCounters>() == 16);
const _: () = assert!(core::mem::size_of::<Settings>() == 8);
const _: () = assert!(core::mem::size_of::<EventBudget>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, made of integers, with no implicit padding
    // (the size assertions above pin the layout).
    unsafe impl aya::Pod for PortRules {}
    unsafe impl aya::Pod for RuleConfig {}
    unsafe impl aya::Pod for AclEntry {}
    unsafe impl aya::Pod for BanEntry {}
    unsafe impl aya::Pod for BlockEntry {}
    unsafe impl aya::Pod for DecisionEntry {}
    unsafe impl aya::Pod for BucketKey {}
    unsafe impl aya::Pod for Bucket {}
    unsafe impl aya::Pod for crate::buckets::BucketSet {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for IfaceCounters {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for crate::http::RouteEntry {}
    unsafe impl aya::Pod for crate::http::StatusRules {}
    unsafe impl aya::Pod for crate::http::Charged {}
}
