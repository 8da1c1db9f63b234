//! Per-source token buckets, one per (rule, source group), in `BUCKETS` (see
//! `agent_common::buckets`).
//!
//! Each bucket is one word, a GCRA theoretical arrival time (TAT): the time at which the
//! bucket is full again. A packet passes when moving the TAT on by its cost keeps it within
//! the burst of now, and the move is one compare-and-exchange, so two CPUs judging the same
//! source at once can never both spend the same token nor credit elapsed time twice: a
//! source spread over every receive queue gets its rate, not a multiple of it. (A token
//! bucket of credit and last-update time, written back with plain stores, can move its
//! clock backwards when CPUs interleave and so hands out elapsed time twice.)
//!
//! The escalation count beside it moves by compare-and-exchange too; its window restart is
//! a plain store, so two CPUs restarting the window at once can lose a few counts.
//!
//! A group gets a bucket only from its second packet within the burst window (see `admit`
//! and `agent_common::admission`), so the buckets are those of sources that came back.

use agent_common::{
    Bucket, BucketKey, CLOCK_COARSE, RuleConfig,
    buckets::{BucketSet, group_hash},
    maps::COUNTER_UNADMITTED,
};

use crate::{admission, atomic, buckets, clock, counters, parse::Packet};

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

/// Compare-and-exchange attempts before a packet that keeps losing the race to other CPUs
/// judging the same source is counted as over the limit (they took the tokens meanwhile).
const CAS_TRIES: u32 = 4;

/// A bucket made at `now` (a rule change), full but for this packet.
#[inline(always)]
fn fresh_bucket(cfg: &RuleConfig, now: u64) -> Bucket {
    Bucket {
        tat_ns: now.saturating_add(cfg.interval_ns),
        _reserved: 0,
        window_start_ns: now,
        excess: 0,
        epoch: cfg.epoch,
    }
}

/// The bucket key of `pkt`'s source group under `rule`.
#[inline(always)]
fn group_key(rule: u32, cfg: &RuleConfig, pkt: &Packet) -> BucketKey {
    let addr = if pkt.v4 {
        [0, 0, pkt.src[2], pkt.src[3] & cfg.mask_v4]
    } else {
        group_v6(pkt, cfg)
    };
    BucketKey { rule, addr }
}

/// Runs a packet through its group's bucket under `rule`. `coarse` is the coarse clock's
/// time; the precise clock is read only for a rule that needs it (`RuleConfig::clock`),
/// and not even then for a bucket that is surely empty.
#[inline(always)]
pub fn take(rule: u32, cfg: &RuleConfig, pkt: &Packet, coarse: u64) -> Outcome {
    let key = group_key(rule, cfg, pkt);
    let hash = group_hash(&key);
    let Some(set) = buckets::set_of(hash) else {
        return Outcome::Within;
    };
    // SAFETY: `set` comes from `set_of`.
    let Some(bucket) = (unsafe { buckets::find(set, &key) }) else {
        return admit(key, hash, set, cfg, now(cfg, coarse));
    };
    // SAFETY: the pointer comes from a successful lookup and stays valid for this program
    // run; the fields other CPUs write concurrently are only accessed atomically below.
    unsafe {
        if (*bucket).epoch != cfg.epoch {
            // The rule changed: start over. Racing CPUs write the same fresh state.
            *bucket = fresh_bucket(cfg, now(cfg, coarse));
            return Outcome::Within;
        }
        let tat = &raw mut (*bucket).tat_ns;
        // A torn read is impossible for an aligned u64.
        let seen = core::ptr::read_volatile(tat);
        if !surely_empty(seen, cfg, coarse) && take_token(tat, seen, cfg, now(cfg, coarse)) {
            return Outcome::Within;
        }
        if cfg.ban_for_ns == 0 {
            return Outcome::Over { escalate: false };
        }
        // Escalation windows and bans last seconds or more: the coarse clock will do.
        escalation(bucket, cfg, coarse)
    }
}

/// The time a rule's buckets are judged by: the coarse clock's where the agent allowed
/// it, else the precise clock's.
#[inline(always)]
fn now(cfg: &RuleConfig, coarse: u64) -> u64 {
    if cfg.clock == CLOCK_COARSE {
        coarse
    } else {
        clock::precise_ns()
    }
}

/// True when a bucket whose TAT is `tat` refuses the packet whatever the precise time: it
/// would still be over the limit two ticks after `coarse` (which lags the precise clock by
/// at most one). A flood against a tight rule so spends no precise clock read on its drops.
#[inline(always)]
fn surely_empty(tat: u64, cfg: &RuleConfig, coarse: u64) -> bool {
    let tick_ns = u64::from(cfg.tick_ns);
    tick_ns != 0
        && tat.saturating_add(cfg.interval_ns)
            > cfg
                .capacity_ns
                .saturating_add(coarse)
                .saturating_add(2 * tick_ns)
}

/// Counts one event of `pkt`'s source group (a response rule's match) in `rule`'s
/// escalation window, in the group's bucket, which has no rate; true when this event
/// completes the rule's `ban_after` count. No admission step: these events come from
/// connections the server accepted, not from spoofable first packets.
#[inline(always)]
pub fn count_toward_ban(rule: u32, cfg: &RuleConfig, pkt: &Packet, now: u64) -> bool {
    let key = group_key(rule, cfg, pkt);
    let Some(set) = buckets::set_of(group_hash(&key)) else {
        return false;
    };
    // SAFETY: `set` comes from `set_of`.
    let Some(bucket) = (unsafe { buckets::find(set, &key) }) else {
        let escalate = cfg.ban_after <= 1;
        let bucket = Bucket {
            excess: u32::from(!escalate),
            ..fresh_bucket(cfg, now)
        };
        // Another CPU's insert meanwhile takes a second slot: one event's difference.
        // SAFETY: `set` comes from `set_of`.
        unsafe { buckets::insert(set, key, bucket) };
        return escalate;
    };
    // SAFETY: as in `take`.
    unsafe {
        if (*bucket).epoch != cfg.epoch {
            // The rule changed: its count starts over from this event.
            *bucket = Bucket {
                excess: 1,
                ..fresh_bucket(cfg, now)
            };
            return cfg.ban_after <= 1;
        }
        matches!(
            escalation(bucket, cfg, now),
            Outcome::Over { escalate: true }
        )
    }
}

/// A packet of a group without a bucket. Its first packet within the burst window only
/// leaves a mark in the admission sketch and passes: a full bucket would have let it pass,
/// and a one-packet source (a spoofed flood) so never takes a bucket's room. The second
/// gets the bucket the first would have left, and its own turn at it. `hash` is the
/// group's hash, `set` its set (`buckets::set_of`).
#[inline(always)]
fn admit(key: BucketKey, hash: u64, set: *mut BucketSet, cfg: &RuleConfig, now: u64) -> Outcome {
    let Some(first) = admission::previous_packet(hash, cfg.capacity_ns, now) else {
        counters::bump(COUNTER_UNADMITTED);
        return Outcome::Within;
    };
    let after_first = first.saturating_add(cfg.interval_ns);
    let next = after_first.max(now).saturating_add(cfg.interval_ns);
    let within = next.saturating_sub(now) <= cfg.capacity_ns;
    // Over the limit already (a burst of 1): this packet is the window's first excess.
    let escalating = cfg.ban_for_ns != 0 && !within;
    let escalate = escalating && cfg.ban_after <= 1;
    let bucket = Bucket {
        tat_ns: if within { next } else { after_first },
        excess: u32::from(escalating && !escalate),
        ..fresh_bucket(cfg, now)
    };
    // If another CPU inserted the bucket meanwhile, this one takes a second slot, the
    // older bucket unused until it is replaced: one packet's difference, once per source.
    // SAFETY: `set` comes from `set_of`, as the caller promises.
    unsafe { buckets::insert(set, key, bucket) };
    if within {
        Outcome::Within
    } else {
        Outcome::Over { escalate }
    }
}

/// Moves the TAT on by one packet's cost if that stays within the burst; false when the
/// bucket is empty (or, after `CAS_TRIES` lost races, emptied by other CPUs). `seen`: the
/// TAT as the caller read it.
///
/// # Safety
/// `tat` points into a bucket from a successful lookup.
#[inline(always)]
unsafe fn take_token(tat: *mut u64, mut seen: u64, cfg: &RuleConfig, now: u64) -> bool {
    for _ in 0..CAS_TRIES {
        // A TAT in the past is a full bucket: time beyond full earns nothing.
        let next = seen.max(now).saturating_add(cfg.interval_ns);
        if next.saturating_sub(now) > cfg.capacity_ns {
            return false;
        }
        // SAFETY: as the caller promises.
        match unsafe { atomic::compare_exchange(tat, seen, next) } {
            Ok(_) => return true,
            Err(current) => seen = current,
        }
    }
    false
}

/// Counts one over-limit packet in the rule's escalation window; the packet that completes
/// `ban_after` of them (exactly one, whatever the CPUs) escalates and restarts the count.
///
/// # Safety
/// `bucket` comes from a successful lookup.
#[inline(always)]
unsafe fn escalation(bucket: *mut Bucket, cfg: &RuleConfig, now: u64) -> Outcome {
    // SAFETY: as the caller promises. `excess` and `epoch` share one aligned 8-byte word
    // (offset 24, const-asserted in agent-common), so the count moves by compare-and-exchange
    // of that word with the epoch half unchanged.
    unsafe {
        if now.saturating_sub((*bucket).window_start_ns) >= cfg.ban_window_ns {
            (*bucket).window_start_ns = now;
            (*bucket).excess = 0;
        }
        let word = (&raw mut (*bucket).excess).cast::<u64>();
        let mut seen = core::ptr::read_volatile(word);
        for _ in 0..CAS_TRIES {
            let count = (seen as u32).wrapping_add(1);
            let escalate = count >= cfg.ban_after;
            let next_count = if escalate { 0 } else { count };
            let next = (seen & !u64::from(u32::MAX)) | u64::from(next_count);
            match atomic::compare_exchange(word, seen, next) {
                Ok(_) => {
                    if escalate {
                        (*bucket).window_start_ns = now;
                    }
                    return Outcome::Over { escalate };
                }
                Err(current) => seen = current,
            }
        }
    }
    // Other CPUs counted this source's excess meanwhile; one of them escalates.
    Outcome::Over { escalate: false }
}
