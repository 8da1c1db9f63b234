//! The decision, in order: allow list, deny list, operator blocks, escalation bans,
//! malformed headers, rate-limit rules, HTTP routes, pass. Shared by the XDP and TC programs, which only
//! translate the `Action`.
//!
//! A deny entry, ban or rule in shadow mode counts and reports what it would have dropped,
//! then the packet goes on to the next step as if the entry did not exist.

use crate::{
    acl, bans, blocks, clock,
    counters::{self, RuleOutcome},
    events,
    frame::Frame,
    http,
    parse::{Packet, Parsed},
    policy_set::PolicySet,
    ratelimit::{self, Outcome},
};
use agent_common::{
    ACL_ALLOW, Action, BLOCK_RULE, EventAction, MalformedCause, Mode, PortRules, Reason,
    http::{ROUTE_DENY, RouteEntry},
    port_key,
};

/// The verdict on a parsed frame that arrived on `ifindex`, with its counters and events.
/// `frame` gives the bytes past the headers (an HTTP request's target).
#[inline(always)]
pub fn judge<F: Frame>(frame: &F, parsed: &Parsed, ifindex: u32) -> Action {
    let action = match parsed {
        Parsed::NotIp => finish(Reason::NotIp),
        Parsed::Malformed(cause) => malformed(*cause),
        Parsed::Ip(pkt) => judge_ip(frame, pkt, ifindex),
    };
    counters::interface(ifindex, action);
    action
}

#[inline(always)]
fn malformed(cause: MalformedCause) -> Action {
    counters::malformed(cause);
    finish(Reason::Malformed)
}

#[inline(always)]
fn finish(reason: Reason) -> Action {
    counters::verdict(reason);
    reason.action()
}

/// Applies a drop decision of `rule`, whose mode code is `mode`: true (drop the packet)
/// when it is enforced, false (go on to the next step) in shadow mode, with the counters
/// and the event either way.
#[inline(always)]
fn enforce(pkt: &Packet, reason: Reason, rule: u32, mode: u32, ifindex: u32) -> bool {
    if mode == Mode::Enforce.code() {
        counters::rule(rule, RuleOutcome::Dropped);
        let action = if reason.action() == Action::Reset {
            EventAction::Reset
        } else {
            EventAction::Dropped
        };
        events::report(pkt, reason, rule, action, ifindex);
        true
    } else {
        counters::rule(rule, RuleOutcome::Shadowed);
        counters::shadow(reason);
        events::report(pkt, reason, rule, EventAction::WouldDrop, ifindex);
        false
    }
}

#[inline(always)]
fn judge_ip<F: Frame>(frame: &F, pkt: &Packet, ifindex: u32) -> Action {
    let policy = PolicySet::current();
    if let Some(entry) = acl::lookup(policy, pkt) {
        if entry.mode == ACL_ALLOW {
            return finish(Reason::Allowed);
        }
        if enforce(pkt, Reason::Denied, entry.rule, entry.mode, ifindex) {
            return finish(Reason::Denied);
        }
    }
    if blocks::active(pkt)
        && enforce(
            pkt,
            Reason::Banned,
            BLOCK_RULE,
            Mode::Enforce.code(),
            ifindex,
        )
    {
        return finish(Reason::Banned);
    }
    if let Some(ban) = bans::active(policy, pkt)
        && enforce(pkt, Reason::Banned, ban.rule, ban.mode, ifindex)
    {
        return finish(Reason::Banned);
    }
    if let Some(cause) = pkt.malformed {
        return malformed(cause);
    }
    let rules = rules_for(policy, pkt);
    if rules.connection_rule == 0 && rules.packet_rule == 0 && rules.http == 0 {
        return finish(Reason::NoMatch);
    }
    let mut matched = false;
    // Token buckets need the precise clock; nothing before them does. Read once, by the
    // first step that needs it.
    let mut clock_read = None;
    if rules.connection_rule != 0 || rules.packet_rule != 0 {
        let now = clock::precise_ns();
        clock_read = Some(now);
        if pkt.syn && rules.connection_rule != 0 {
            if limit(
                policy,
                pkt,
                rules.connection_rule,
                Reason::RateLimited,
                ifindex,
                now,
            ) {
                return finish(Reason::RateLimited);
            }
            matched = true;
        }
        if rules.packet_rule != 0 {
            if limit(
                policy,
                pkt,
                rules.packet_rule,
                Reason::RateLimited,
                ifindex,
                now,
            ) {
                return finish(Reason::RateLimited);
            }
            matched = true;
        }
    }
    if rules.http != 0
        && let Some(route) = http::route(frame, policy, pkt)
    {
        if let Some(reason) = judge_route(policy, pkt, route, ifindex, clock_read) {
            let action = finish(reason);
            return if frame.reset() { action } else { Action::Drop };
        }
        // As for rate limits, a request its route's bucket took counts as within a limit;
        // a denied route in shadow mode is as if it were not there.
        matched |= route.kind != ROUTE_DENY;
    }
    finish(if matched {
        Reason::WithinLimit
    } else {
        Reason::NoMatch
    })
}

/// A request for `route`: the reason it is refused for, or `None` when it goes on.
/// `clock_read` is the precise time if an earlier step read it.
#[inline(always)]
fn judge_route(
    policy: PolicySet,
    pkt: &Packet,
    route: RouteEntry,
    ifindex: u32,
    clock_read: Option<u64>,
) -> Option<Reason> {
    if route.kind == ROUTE_DENY {
        let mode = policy.rule(route.rule)?.mode;
        return enforce(pkt, Reason::RouteDenied, route.rule, mode, ifindex)
            .then_some(Reason::RouteDenied);
    }
    let now = clock_read.unwrap_or_else(clock::precise_ns);
    limit(policy, pkt, route.rule, Reason::RouteLimited, ifindex, now)
        .then_some(Reason::RouteLimited)
}

/// Rules scoped to the packet's port take precedence over rules for its whole class; the
/// agent merges the two kinds (packets, connections) so one lookup gives both.
#[inline(always)]
fn rules_for(policy: PolicySet, pkt: &Packet) -> PortRules {
    if pkt.has_port
        && let Some(rules) = policy.port_rules().get_ptr(port_key(pkt.class, pkt.dport))
    {
        // SAFETY: pointer from a successful lookup; the agent only replaces whole values.
        return unsafe { *rules };
    }
    policy
        .class_rules()
        .get(pkt.class as u32)
        .copied()
        .unwrap_or_default()
}

/// Runs the packet through one rule's bucket; true when it must be dropped (for `reason`).
#[inline(always)]
fn limit(
    policy: PolicySet,
    pkt: &Packet,
    rule: u32,
    reason: Reason,
    ifindex: u32,
    now: u64,
) -> bool {
    let Some(cfg) = policy.rule(rule) else {
        return false;
    };
    if cfg.interval_ns == 0 {
        return false;
    }
    match ratelimit::take(rule, cfg, pkt, now) {
        Outcome::Within => {
            counters::rule(rule, RuleOutcome::Passed);
            false
        }
        Outcome::Over { escalate } => {
            if escalate {
                bans::start(pkt, rule, cfg, now);
                let action = if cfg.mode == Mode::Enforce.code() {
                    EventAction::Banned
                } else {
                    EventAction::WouldBan
                };
                events::report(pkt, Reason::Banned, rule, action, ifindex);
            }
            enforce(pkt, reason, rule, cfg.mode, ifindex)
        }
    }
}
