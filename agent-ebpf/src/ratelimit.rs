//! Per-source token buckets, one per (rule, source group), in an LRU map.
//!
//! Known race: two CPUs can read and write the same bucket at once, so under a flood spread
//! over several queues a source may get a few more packets than its burst. aya-ebpf 0.2's
//! legacy map definitions carry no BTF, so `bpf_spin_lock` is not available; Cilium's
//! `bpf/lib/ratelimit.h` accepts the same approximation.

use agent_common::{Bucket, BucketKey, RuleConfig, maps::COUNTER_BUCKETS_CREATED};

use crate::{counters, maps::BUCKETS, parse::Packet};

pub enum Outcome {
    /// The packet took a token.
    Within,
    /// Over the limit; `escalate` is true when this packet completed the rule's
    /// `ban_after` count and the source should now be banned.
    Over { escalate: bool },
}

/// The IPv6 source group of `pkt` under `cfg`'s prefix.
#[inline(always)]
pub fn group_v6(pkt: &Packet, cfg: &RuleConfig) -> [u32; 4] {
    [
        pkt.src[0] & cfg.mask_v6[0],
        pkt.src[1] & cfg.mask_v6[1],
        pkt.src[2] & cfg.mask_v6[2],
        pkt.src[3] & cfg.mask_v6[3],
    ]
}

#[inline(always)]
fn fresh_bucket(cfg: &RuleConfig, now: u64) -> Bucket {
    Bucket {
        // A new source starts with a full bucket, minus this packet.
        credit_ns: cfg.capacity_ns - cfg.interval_ns,
        last_ns: now,
        window_start_ns: now,
        excess: 0,
        epoch: cfg.epoch,
    }
}

#[inline(always)]
pub fn take(rule: u32, cfg: &RuleConfig, pkt: &Packet, now: u64) -> Outcome {
    let addr = if pkt.v4 {
        [0, 0, pkt.src[2], pkt.src[3] & cfg.mask_v4]
    } else {
        group_v6(pkt, cfg)
    };
    let key = BucketKey { rule, addr };
    let Some(bucket) = BUCKETS.get_ptr_mut(key) else {
        // If the insert fails (another CPU raced us), this packet still passes: the next
        // one finds the bucket.
        if BUCKETS.insert(key, fresh_bucket(cfg, now), 0).is_ok() {
            counters::bump(COUNTER_BUCKETS_CREATED);
        }
        return Outcome::Within;
    };
    // SAFETY: the pointer comes from a successful lookup; see the race note above.
    let bucket = unsafe { &mut *bucket };
    if bucket.epoch != cfg.epoch {
        *bucket = fresh_bucket(cfg, now);
        return Outcome::Within;
    }
    let elapsed = now.saturating_sub(bucket.last_ns);
    let credit = bucket
        .credit_ns
        .saturating_add(elapsed)
        .min(cfg.capacity_ns);
    bucket.last_ns = now;
    if credit >= cfg.interval_ns {
        bucket.credit_ns = credit - cfg.interval_ns;
        return Outcome::Within;
    }
    bucket.credit_ns = credit;
    if cfg.ban_for_ns == 0 {
        return Outcome::Over { escalate: false };
    }
    if now.saturating_sub(bucket.window_start_ns) >= cfg.ban_window_ns {
        bucket.window_start_ns = now;
        bucket.excess = 0;
    }
    bucket.excess += 1;
    if bucket.excess < cfg.ban_after {
        return Outcome::Over { escalate: false };
    }
    bucket.excess = 0;
    bucket.window_start_ns = now;
    Outcome::Over { escalate: true }
}
