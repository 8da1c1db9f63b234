//! Which of the two policy map sets judges a packet. The agent writes the set not in force,
//! then flips `GENERATION`; reading it once per packet and taking every policy lookup from
//! the same set means a packet is judged by one whole policy, never a mix of two.
//!
//! The set is a type parameter, not a value: the code that judges a packet is compiled once
//! for each set, and a caller branches on `second_in_force` into one copy or the other.
//! So every lookup names one map, which the verifier turns into a direct call (an array
//! lookup into a few inline instructions). Where a lookup could see either of two maps, the
//! verifier must go through the generic helper and an indirect call (a retpoline here):
//! 10 to 14 ns for each policy lookup, three of them on the rate-limit and no-match paths.

use agent_common::{
    AclEntry, PortRules, RuleConfig,
    http::{ROUTE_KEY_BYTES, RouteEntry, StatusRules},
    port_key,
};
use aya_ebpf::maps::{Array, HashMap, LpmTrie};

use crate::maps::{
    ACL_IP_V4_0, ACL_IP_V4_1, ACL_IP_V6_0, ACL_IP_V6_1, ACL_V4_0, ACL_V4_1, ACL_V6_0, ACL_V6_1,
    CLASS_RULES_0, CLASS_RULES_1, GENERATION, PORT_RULES_0, PORT_RULES_1, ROUTES_0, ROUTES_1,
    RULES_0, RULES_1, STATUS_RULES_0, STATUS_RULES_1,
};

/// True when the second set is in force: judge with `PolicySet::<true>`, else with
/// `PolicySet::<false>`.
#[inline(always)]
pub fn second_in_force() -> bool {
    GENERATION.get(0).is_some_and(|generation| *generation != 0)
}

#[derive(Clone, Copy)]
pub struct PolicySet<const SECOND: bool>;

impl<const SECOND: bool> PolicySet<SECOND> {
    /// 0 or 1: this set's index in maps shared by both (`HAS_ADDRESSES`).
    #[inline(always)]
    pub fn index(&self) -> u32 {
        u32::from(SECOND)
    }

    #[inline(always)]
    fn pick<T>(&self, first: &'static T, second: &'static T) -> &'static T {
        if SECOND { second } else { first }
    }

    #[inline(always)]
    pub fn acl_ip_v4(&self) -> &'static HashMap<u32, AclEntry> {
        self.pick(&ACL_IP_V4_0, &ACL_IP_V4_1)
    }

    #[inline(always)]
    pub fn acl_ip_v6(&self) -> &'static HashMap<[u32; 4], AclEntry> {
        self.pick(&ACL_IP_V6_0, &ACL_IP_V6_1)
    }

    #[inline(always)]
    pub fn acl_v4(&self) -> &'static LpmTrie<u32, AclEntry> {
        self.pick(&ACL_V4_0, &ACL_V4_1)
    }

    #[inline(always)]
    pub fn acl_v6(&self) -> &'static LpmTrie<[u32; 4], AclEntry> {
        self.pick(&ACL_V6_0, &ACL_V6_1)
    }

    #[inline(always)]
    pub fn port_rules(&self) -> &'static Array<PortRules> {
        self.pick(&PORT_RULES_0, &PORT_RULES_1)
    }

    #[inline(always)]
    pub fn class_rules(&self) -> &'static Array<PortRules> {
        self.pick(&CLASS_RULES_0, &CLASS_RULES_1)
    }

    #[inline(always)]
    pub fn routes(&self) -> &'static LpmTrie<[u8; ROUTE_KEY_BYTES], RouteEntry> {
        self.pick(&ROUTES_0, &ROUTES_1)
    }

    #[inline(always)]
    pub fn status_rules(&self) -> &'static Array<StatusRules> {
        self.pick(&STATUS_RULES_0, &STATUS_RULES_1)
    }

    /// The rules for `port` of `class` (the agent writes its class's rules into every
    /// port that has none of its own, and merges the two kinds, packets and connections,
    /// so one lookup gives both). `port` `None`: a packet without ports, which only its
    /// class's rules cover.
    #[inline(always)]
    pub fn rules_for(&self, class: u8, port: Option<u16>) -> PortRules {
        let rules = match port {
            Some(port) => self.port_rules().get(port_key(class, port)),
            None => self.class_rules().get(u32::from(class)),
        };
        rules.copied().unwrap_or_default()
    }

    /// The configuration of rule `id`, if the id is in use.
    #[inline(always)]
    pub fn rule(&self, id: u32) -> Option<&'static RuleConfig> {
        self.pick(&RULES_0, &RULES_1).get(id)
    }
}
