//! Drop, shadow and ban events into the ring buffer, within a per-CPU budget per second.
//! Events over the budget are counted, not written: a flood of millions of packets per
//! second costs one counter increment per packet here, not a ring-buffer record.

use agent_common::{
    Event, EventAction, Reason,
    event::EVENT_REQUEST_BYTES,
    maps::{COUNTER_EVENTS_LOST, COUNTER_EVENTS_SUPPRESSED, COUNTER_EVENTS_WRITTEN},
};

use crate::{
    counters::bump,
    maps::{EVENT_BUDGET, EVENTS, ROUTE_SCRATCH, SETTINGS},
    parse::Packet,
};

const SECOND_NS: u64 = 1_000_000_000;

/// Spends one unit of this CPU's budget; false when it is spent for this second.
#[inline(always)]
fn within_budget(now: u64) -> bool {
    let limit = match SETTINGS.get(0) {
        Some(settings) => settings.events_per_cpu_per_sec,
        None => 0,
    };
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot; nothing else on this CPU runs while we do.
    let budget = unsafe { &mut *budget };
    if now.saturating_sub(budget.window_start_ns) >= SECOND_NS {
        budget.window_start_ns = now;
        budget.used = 0;
    }
    if budget.used >= limit {
        return false;
    }
    budget.used += 1;
    true
}

/// Reports a packet judged at `now`, the coarse clock's time (a one-second budget window
/// and log timestamps do not need the precise one), which the caller has read already
/// where it judged the packet by time.
#[inline(always)]
pub fn report(
    pkt: &Packet,
    reason: Reason,
    rule: u32,
    action: EventAction,
    ifindex: u32,
    now: u64,
) {
    if !within_budget(now) {
        bump(COUNTER_EVENTS_SUPPRESSED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(COUNTER_EVENTS_LOST);
        return;
    };
    let src = pkt.src;
    // SAFETY: `[u32; 4]` and `[u8; 16]` have the same size, and any bytes are valid.
    let src: [u8; 16] = unsafe { core::mem::transmute(src) };
    // Field by field into the reserved record: an `Event` built on the stack would take
    // 112 of its 512 bytes.
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is `size_of::<Event>()` bytes, written before it is submitted.
    unsafe {
        (*event).ts_ns = now;
        (*event).src = src;
        (*event).ifindex = ifindex;
        (*event).rule = rule;
        (*event).reason = reason as u32;
        (*event).dport = pkt.dport;
        (*event).family = if pkt.v4 { 4 } else { 6 };
        (*event).protocol = pkt.protocol;
        (*event).action = action.code();
        (*event)._pad = [0; 6];
        (*event).request_len = 0;
        // A route's decision: the request the route lookup just read, from its scratch.
        if matches!(
            reason,
            Reason::RouteDenied | Reason::RouteLimited | Reason::HttpEvasion
        ) && let Some(lookup) = ROUTE_SCRATCH.get(0)
        {
            core::ptr::copy_nonoverlapping(
                lookup.data.as_ptr(),
                (*event).request.as_mut_ptr(),
                EVENT_REQUEST_BYTES,
            );
            (*event).request_len = (lookup.prefix_len / 8).min(EVENT_REQUEST_BYTES as u32) as u8;
        }
    }
    entry.submit(0);
    bump(COUNTER_EVENTS_WRITTEN);
}
