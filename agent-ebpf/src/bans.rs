//! Temporary bans of source groups, made by escalation. A ban expires by itself: the
//! kernel ignores a ban whose time is up, or whose rule has changed since, and the agent's
//! sweep removes it.

use agent_common::{BanEntry, RuleConfig};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    clock, counters,
    maps::{BANS_V4, BANS_V6},
    parse::Packet,
    policy_set::PolicySet,
    ratelimit,
};

/// A ban in force: the rule that made it and that rule's current mode.
pub struct ActiveBan {
    pub rule: u32,
    pub mode: u32,
}

#[inline(always)]
pub fn active(policy: PolicySet, pkt: &Packet) -> Option<ActiveBan> {
    let ban = if pkt.v4 {
        *BANS_V4.get(Key::new(32, pkt.src[3]))?
    } else {
        *BANS_V6.get(Key::new(128, pkt.src))?
    };
    let cfg = policy.rule(ban.rule).filter(|cfg| cfg.epoch == ban.epoch)?;
    // Ban times are seconds or more: the coarse clock (one tick behind at most) will do.
    // An ended or void ban is ignored here, not removed: a lookup does not say which key
    // matched, and guessing it from the rule's prefix could remove another entry (the
    // rule may be gone). The agent's sweep removes it by its exact key.
    (clock::coarse_ns() < ban.expires_ns).then_some(ActiveBan {
        rule: ban.rule,
        mode: cfg.mode,
    })
}

/// Bans the source group of `pkt` under `rule` for the rule's ban time.
#[inline(always)]
pub fn start(pkt: &Packet, rule: u32, cfg: &RuleConfig, now: u64) {
    let ban = BanEntry {
        // Saturating: a ban as long as time itself is a ban, not one that ended long ago.
        expires_ns: now.saturating_add(cfg.ban_for_ns),
        rule,
        epoch: cfg.epoch,
    };
    let stored = if pkt.v4 {
        BANS_V4.insert(Key::new(cfg.prefix_v4, pkt.src[3] & cfg.mask_v4), ban, 0)
    } else {
        let group = ratelimit::group_v6(pkt, cfg);
        BANS_V6.insert(Key::new(cfg.prefix_v6, group), ban, 0)
    };
    if stored.is_err() {
        counters::bump(agent_common::maps::COUNTER_BANS_FAILED);
    }
}
