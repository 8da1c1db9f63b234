//! Per-CPU counters: verdicts by reason, shadow hits by reason, and per-rule counts.

use agent_common::{
    Action, MalformedCause, Reason,
    maps::{IFACE_SLOTS, REASON_SLOTS},
};

use crate::maps::{COUNTERS, IFACE_COUNTERS, MALFORMED, RULE_COUNTERS};

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; nothing else on this CPU runs while we do.
        unsafe { *counter += 1 };
    }
}

/// Counts the final verdict of a packet.
#[inline(always)]
pub fn verdict(reason: Reason) {
    bump(reason as u32);
}

/// Counts a decision that would have dropped the packet if its rule were enforced.
#[inline(always)]
pub fn shadow(reason: Reason) {
    bump(REASON_SLOTS + reason as u32);
}

/// Counts why a frame was malformed (its verdict is counted under `Reason::Malformed`).
#[inline(always)]
pub fn malformed(cause: MalformedCause) {
    if let Some(counter) = MALFORMED.get_ptr_mut(cause.code()) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *counter += 1 };
    }
}

pub enum RuleOutcome {
    Passed,
    Dropped,
    Shadowed,
}

#[inline(always)]
pub fn rule(rule: u32, outcome: RuleOutcome) {
    if let Some(counters) = RULE_COUNTERS.get_ptr_mut(rule) {
        // SAFETY: per-CPU slot, as above.
        let counters = unsafe { &mut *counters };
        match outcome {
            RuleOutcome::Passed => counters.passed += 1,
            RuleOutcome::Dropped => counters.dropped += 1,
            RuleOutcome::Shadowed => counters.shadowed += 1,
        }
    }
}

/// Counts a packet's verdict on the interface it arrived on.
#[inline(always)]
pub fn interface(ifindex: u32, action: Action) {
    if let Some(counters) = IFACE_COUNTERS.get_ptr_mut(ifindex % IFACE_SLOTS) {
        // SAFETY: per-CPU slot, as above.
        let counters = unsafe { &mut *counters };
        match action {
            Action::Pass => counters.passed += 1,
            // A reset refuses what it rewrites: counted with the drops.
            Action::Drop | Action::Reset => counters.dropped += 1,
        }
    }
}
