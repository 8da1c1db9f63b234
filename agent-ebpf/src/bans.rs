//! Temporary bans of source groups, made by escalation. A ban expires by itself: the
//! kernel ignores a ban whose time is up, or whose rule has changed since, and the agent's
//! sweep removes it.
//!
//! Bans aggregate: once a rule has banned `aggregate_after` groups inside one wider group
//! (a /24, a /48) within a ban's duration, its next ban there is of the wider group. The
//! count is kept with plain stores: bans are rare, and two CPUs racing only delay the
//! wider ban by one.

use agent_common::{
    BanEntry, BanGroup, BucketKey, EventAction, Mode, Reason, RuleConfig, maps::EMPTY_BANS,
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    clock, counters, empty, events,
    maps::{BAN_GROUPS, BANS_V4, BANS_V6},
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
pub fn active<const S: bool>(policy: PolicySet<S>, pkt: &Packet) -> Option<ActiveBan> {
    if empty::marked(EMPTY_BANS) {
        return None;
    }
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

/// Bans the source group of `pkt` under `rule` (see `start`) and reports it: a ban event, or
/// a would-ban event for a rule in shadow mode. `ifindex`: where the packet that made it
/// arrived (or, for a response, left).
#[inline(always)]
pub fn make(pkt: &Packet, rule: u32, cfg: &RuleConfig, now: u64, ifindex: u32) {
    start(pkt, rule, cfg, now);
    let action = if cfg.mode == Mode::Enforce.code() {
        EventAction::Banned
    } else {
        EventAction::WouldBan
    };
    events::report(pkt, Reason::Banned, rule, action, ifindex, now);
}

/// Bans the source group of `pkt` under `rule` for the rule's ban time, or its wider group
/// when the rule has banned enough groups inside that one.
#[inline(always)]
fn start(pkt: &Packet, rule: u32, cfg: &RuleConfig, now: u64) {
    let ban = BanEntry {
        // Saturating: a ban as long as time itself is a ban, not one that ended long ago.
        expires_ns: now.saturating_add(cfg.ban_for_ns),
        rule,
        epoch: cfg.epoch,
    };
    let stored = if pkt.v4 {
        let wide = pkt.src[3] & cfg.aggregate_mask_v4;
        if widens(rule, cfg, cfg.aggregate_prefix_v4, [0, 0, 0, wide], now) {
            BANS_V4.insert(Key::new(cfg.aggregate_prefix_v4, wide), ban, 0)
        } else {
            BANS_V4.insert(Key::new(cfg.prefix_v4, pkt.src[3] & cfg.mask_v4), ban, 0)
        }
    } else {
        let group = ratelimit::group_v6(pkt, cfg);
        let m = cfg.aggregate_mask_v6;
        let wide = [
            group[0] & m[0],
            group[1] & m[1],
            group[2] & m[2],
            group[3] & m[3],
        ];
        if widens(rule, cfg, cfg.aggregate_prefix_v6, wide, now) {
            BANS_V6.insert(Key::new(cfg.aggregate_prefix_v6, wide), ban, 0)
        } else {
            BANS_V6.insert(Key::new(cfg.prefix_v6, group), ban, 0)
        }
    };
    match stored {
        // After the insert: the agent, which marks the ban maps empty, looks again after
        // marking them, so one of the two always sees the other's write.
        Ok(()) => empty::clear(EMPTY_BANS),
        Err(_) => counters::bump(agent_common::maps::COUNTER_BANS_FAILED),
    }
}

/// Counts a ban of `rule` inside the wider group `wide` (of prefix `prefix`, 0 when the
/// family does not widen); true when this ban should be of the wider group.
#[inline(always)]
fn widens(rule: u32, cfg: &RuleConfig, prefix: u32, wide: [u32; 4], now: u64) -> bool {
    if prefix == 0 || cfg.aggregate_after == 0 {
        return false;
    }
    let key = BucketKey { rule, addr: wide };
    let Some(group) = BAN_GROUPS.get_ptr_mut(key) else {
        let first = BanGroup {
            window_start_ns: now,
            bans: 1,
            epoch: cfg.epoch,
        };
        // A failed insert only delays the wider ban.
        let _ = BAN_GROUPS.insert(key, first, 0);
        return false;
    };
    // SAFETY: a pointer from a successful lookup; see the module's note on races.
    let group = unsafe { &mut *group };
    if group.epoch != cfg.epoch || now.saturating_sub(group.window_start_ns) >= cfg.ban_for_ns {
        *group = BanGroup {
            window_start_ns: now,
            bans: 0,
            epoch: cfg.epoch,
        };
    }
    group.bans = group.bans.saturating_add(1);
    group.bans > cfg.aggregate_after
}
