//! The decision, in order: allow list, deny list, operator blocks, detector decisions
//! (CrowdSec), escalation bans, malformed headers, rate-limit rules, HTTP evasion
//! (`http.strict`), HTTP routes, pass. Shared by the XDP and TC programs, which only
//! translate the `Action`.
//!
//! A deny entry, ban or rule in shadow mode counts and reports what it would have dropped,
//! then the packet goes on to the next step as if the entry did not exist.

use crate::{
    accepted, acl, bans, blocks, clock,
    counters::{self, RuleOutcome},
    decisions, evasion, events,
    frame::{Frame, Tc, Xdp},
    http::{self, Start},
    parse::{Packet, Parsed, l4::IPPROTO_TCP},
    policy_set::PolicySet,
    ratelimit::{self, Outcome},
    reset::{Connection, Segment},
};
use agent_common::{
    ACL_ALLOW, Action, BLOCK_RULE, EVASION_RULE, EventAction, MalformedCause, Mode, PortRules,
    Reason,
    http::{HTTP_NONE, HTTP_STRICT, ROUTE_DENY, ROUTE_LIMIT_DROP, RouteEntry},
};
use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    programs::{TcContext, XdpContext},
};

/// The verdict on a parsed frame that arrived on `ifindex`, with its counters and events.
/// `frame` gives the bytes past the headers (an HTTP request's target).
#[inline(always)]
pub fn judge<F: Frame>(frame: &F, parsed: &Parsed, ifindex: u32) -> Action {
    let action = match parsed {
        Parsed::NotIp => finish(Reason::NotIp),
        Parsed::Malformed(cause) => malformed(*cause),
        // The rewrite into a reset is called from here, not from inside the judge: a
        // chain of three global functions' stacks would pass the 512 bytes allowed.
        Parsed::Ip(pkt) => match frame.judge_ip(pkt, ifindex) {
            Action::Reset if !frame.reset() => Action::Drop,
            action => action,
        },
    };
    counters::interface(ifindex, action);
    action
}

// An IP packet is judged in a global function of each program (through `Frame::judge_ip`):
// the verifier checks it once, for any packet, rather than once for each of the many ways
// the parser can end (VLAN tags, IPv6 extension headers, options), which it cannot tell
// apart from one another and so could not prune. The packet is passed by pointer, the
// answer is an `Action` code. There is one function for each policy set (see
// `policy_set`): the caller picks the one in force.

/// `Action` as a global function's answer.
const ACTION_PASS: u32 = 0;
const ACTION_DROP: u32 = 1;
const ACTION_RESET: u32 = 2;

#[inline(always)]
fn action_code(action: Action) -> u32 {
    match action {
        Action::Pass => ACTION_PASS,
        Action::Drop => ACTION_DROP,
        Action::Reset => ACTION_RESET,
    }
}

#[inline(always)]
pub fn action_of(code: u32) -> Action {
    match code {
        ACTION_DROP => Action::Drop,
        ACTION_RESET => Action::Reset,
        _ => Action::Pass,
    }
}

/// `judge_ip` for XDP with the first policy set.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portcullis_judge_xdp_0(
    ctx: *mut xdp_md,
    pkt: *const Packet,
    ifindex: u32,
) -> u32 {
    judge_xdp(PolicySet::<false>, ctx, pkt, ifindex)
}

/// `judge_ip` for XDP with the second policy set.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portcullis_judge_xdp_1(
    ctx: *mut xdp_md,
    pkt: *const Packet,
    ifindex: u32,
) -> u32 {
    judge_xdp(PolicySet::<true>, ctx, pkt, ifindex)
}

/// `judge_ip` for TC with the first policy set.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portcullis_judge_tc_0(
    skb: *mut __sk_buff,
    pkt: *const Packet,
    ifindex: u32,
) -> u32 {
    judge_tc(PolicySet::<false>, skb, pkt, ifindex)
}

/// `judge_ip` for TC with the second policy set.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portcullis_judge_tc_1(
    skb: *mut __sk_buff,
    pkt: *const Packet,
    ifindex: u32,
) -> u32 {
    judge_tc(PolicySet::<true>, skb, pkt, ifindex)
}

/// The body of the XDP global functions. (`pkt` is never null: the caller passes its own
/// stack; the check is for the verifier.)
#[inline(always)]
fn judge_xdp<const S: bool>(
    policy: PolicySet<S>,
    ctx: *mut xdp_md,
    pkt: *const Packet,
    ifindex: u32,
) -> u32 {
    // SAFETY: a null pointer gives `None`; otherwise the caller's packet.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return ACTION_PASS;
    };
    let ctx = XdpContext::new(ctx);
    action_code(judge_ip(&Xdp(&ctx), policy, pkt, ifindex))
}

/// The body of the TC global functions.
#[inline(always)]
fn judge_tc<const S: bool>(
    policy: PolicySet<S>,
    skb: *mut __sk_buff,
    pkt: *const Packet,
    ifindex: u32,
) -> u32 {
    // SAFETY: as above.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return ACTION_PASS;
    };
    let ctx = TcContext::new(skb);
    action_code(judge_ip(&Tc(&ctx), policy, pkt, ifindex))
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

/// Applies a refusal of `rule`, whose mode code is `mode`: true (refuse the packet: drop
/// it, or reset its connection when `reset`) when it is enforced, false (go on to the next
/// step) in shadow mode, with the counters and the event (at `now`, the coarse clock's
/// time) either way.
#[inline(always)]
fn enforce(
    pkt: &Packet,
    reason: Reason,
    rule: u32,
    mode: u32,
    ifindex: u32,
    reset: bool,
    now: u64,
) -> bool {
    if mode == Mode::Enforce.code() {
        counters::rule(rule, RuleOutcome::Dropped);
        let action = if reset {
            EventAction::Reset
        } else {
            EventAction::Dropped
        };
        events::report(pkt, reason, rule, action, ifindex, now);
        true
    } else {
        counters::rule(rule, RuleOutcome::Shadowed);
        counters::shadow(reason);
        events::report(pkt, reason, rule, EventAction::WouldDrop, ifindex, now);
        false
    }
}

#[inline(always)]
fn judge_ip<F: Frame, const S: bool>(
    frame: &F,
    policy: PolicySet<S>,
    pkt: &Packet,
    ifindex: u32,
) -> Action {
    if let Some(entry) = acl::lookup(policy, pkt) {
        if entry.mode == ACL_ALLOW {
            return finish(Reason::Allowed);
        }
        if enforce(
            pkt,
            Reason::Denied,
            entry.rule,
            entry.mode,
            ifindex,
            false,
            clock::coarse_ns(),
        ) {
            return finish(Reason::Denied);
        }
    }
    // A ban refuses a source's new connections and new requests, and lets the rest of a
    // connection to an HTTP port close (see `Refusal`). An operator block is always
    // enforced and wins over a detector's decision, which is always enforced and wins
    // over an escalation ban.
    let blocked = blocks::active(pkt);
    let decided = if blocked {
        None
    } else {
        decisions::active(pkt)
    };
    if let Some(origin) = decided {
        let refusal = Refusal::of(frame, policy, pkt);
        if refusal != Refusal::Spare {
            let reset = refusal == Refusal::Reset;
            report_decision(pkt, origin, ifindex, reset);
            return refuse(Reason::Decision, reset);
        }
    }
    let ban = if blocked {
        Some((BLOCK_RULE, Mode::Enforce.code()))
    } else if decided.is_some() {
        None
    } else {
        bans::active(policy, pkt).map(|ban| (ban.rule, ban.mode))
    };
    if let Some((rule, mode)) = ban {
        let refusal = Refusal::of(frame, policy, pkt);
        let reset = refusal == Refusal::Reset;
        if refusal != Refusal::Spare
            && enforce(
                pkt,
                Reason::Banned,
                rule,
                mode,
                ifindex,
                reset,
                clock::coarse_ns(),
            )
        {
            return refuse(Reason::Banned, reset);
        }
    }
    if let Some(cause) = pkt.malformed {
        return malformed(cause);
    }
    let rules = rules_for(policy, pkt);
    if rules.connection_rule == 0 && rules.packet_rule == 0 && rules.http == HTTP_NONE {
        return finish(Reason::NoMatch);
    }
    let mut matched = false;
    if rules.connection_rule != 0 || rules.packet_rule != 0 {
        if pkt.syn && rules.connection_rule != 0 {
            if limit(
                policy,
                pkt,
                rules.connection_rule,
                Reason::RateLimited,
                ifindex,
                false,
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
                false,
            ) {
                return finish(Reason::RateLimited);
            }
            matched = true;
        }
    }
    if rules.http != HTTP_NONE {
        let strict = rules.http == HTTP_STRICT;
        // A fragment cannot be rewritten into a RST (it would still claim more fragments):
        // a refusal in one drops it.
        let reset = !pkt.more_fragments;
        match http::read(frame, policy, pkt) {
            Start::Request { route, target_len } => {
                // Every request asks, so that the connection's first marks it (see
                // `accepted`); a segment cut before its TCP header's end is no one's.
                let connection = frame.connection(pkt);
                let verified = connection.as_ref().is_some_and(accepted::client_verified);
                if strict
                    && evasion::portcullis_evasive_target(target_len) != 0
                    && evaded(policy, pkt, ifindex, reset)
                {
                    return refuse(Reason::HttpEvasion, reset);
                }
                if let Some(route) = route {
                    // A request on a connection not verified as its client's is dropped
                    // when a limit refuses it: a reset would act on a connection that may
                    // be someone else's.
                    let reset = reset
                        && route.kind != ROUTE_LIMIT_DROP
                        && (verified || route.kind == ROUTE_DENY);
                    let charged = if verified { connection } else { None };
                    if let Some(reason) = judge_route(policy, pkt, (route, reset), charged, ifindex)
                    {
                        return refuse(reason, reset);
                    }
                    // As for rate limits, a request its route's bucket took counts as within
                    // a limit; a denied route in shadow mode is as if it were not there.
                    matched |= route.kind != ROUTE_DENY;
                }
            }
            Start::H2cPreface if strict && evaded(policy, pkt, ifindex, reset) => {
                return refuse(Reason::HttpEvasion, reset);
            }
            // The connection's first bytes, where its first request must start.
            Start::Other
                if strict
                    && frame.carries_data(pkt)
                    && accepted::opens_without_a_request(frame, pkt)
                    && evaded(policy, pkt, ifindex, reset) =>
            {
                return refuse(Reason::HttpEvasion, reset);
            }
            Start::H2cPreface | Start::Other => {}
        }
    }
    finish(if matched {
        Reason::WithinLimit
    } else {
        Reason::NoMatch
    })
}

/// The event of a packet refused by a detector's decision from `origin` (always enforced,
/// counted by its reason alone): it names the origin where others name the rule.
#[inline(always)]
fn report_decision(pkt: &Packet, origin: u32, ifindex: u32, reset: bool) {
    let action = if reset {
        EventAction::Reset
    } else {
        EventAction::Dropped
    };
    events::report(
        pkt,
        Reason::Decision,
        origin,
        action,
        ifindex,
        clock::coarse_ns(),
    );
}

/// Applies `http.strict` to an evasive request (`evasion`), counted and reported under the
/// `http-evasion` rule: true when it is refused (`reset`: by a reset), false in shadow mode.
#[inline(always)]
fn evaded<const S: bool>(policy: PolicySet<S>, pkt: &Packet, ifindex: u32, reset: bool) -> bool {
    let mode = policy
        .rule(EVASION_RULE)
        .map_or(Mode::Enforce.code(), |cfg| cfg.mode);
    enforce(
        pkt,
        Reason::HttpEvasion,
        EVASION_RULE,
        mode,
        ifindex,
        reset,
        clock::coarse_ns(),
    )
}

/// A request for `route`: the reason it is refused for, or `None` when it goes on.
/// `reset`: a refusal resets the connection (else it drops the segment). `connection`:
/// the request's connection and sequence number if the client is verified (`accepted`);
/// its source's bucket is charged then, and the pool of unverified requests otherwise.
#[inline(always)]
fn judge_route<const S: bool>(
    policy: PolicySet<S>,
    pkt: &Packet,
    (route, reset): (RouteEntry, bool),
    connection: Option<Connection>,
    ifindex: u32,
) -> Option<Reason> {
    if route.kind == ROUTE_DENY {
        return refused_by(policy, pkt, Reason::RouteDenied, route.rule, ifindex, reset);
    }
    let Some(Connection { flow, seq, .. }) = &connection else {
        // Spoofed segments, or a connection opened before the agent noted it: they share
        // one bucket, so they cost no source its own and still pass no more than the
        // route's rate together.
        return limit_in(
            policy,
            pkt,
            Charge::Pool,
            route.rule,
            Reason::RouteLimited,
            ifindex,
            false,
        )
        .then_some(Reason::RouteLimited);
    };
    // One request, charged once: the client's retransmission of a request this route
    // refused (its connection reset since) is refused again, and that of a request it
    // took a token for passes, neither taking another token.
    if Segment::recently_reset(flow) {
        return refused_by(
            policy,
            pkt,
            Reason::RouteLimited,
            route.rule,
            ifindex,
            reset,
        );
    }
    if Segment::already_charged(flow, *seq) {
        return None;
    }
    let refused = limit(
        policy,
        pkt,
        route.rule,
        Reason::RouteLimited,
        ifindex,
        reset,
    );
    if !refused {
        Segment::charged(flow, *seq);
    }
    refused.then_some(Reason::RouteLimited)
}

/// A refusal of `pkt` for `reason` under `rule`, in the rule's mode: `Some(reason)` when
/// it is enforced, `None` in shadow mode (see `enforce`).
#[inline(always)]
fn refused_by<const S: bool>(
    policy: PolicySet<S>,
    pkt: &Packet,
    reason: Reason,
    rule: u32,
    ifindex: u32,
    reset: bool,
) -> Option<Reason> {
    let mode = policy.rule(rule)?.mode;
    enforce(pkt, reason, rule, mode, ifindex, reset, clock::coarse_ns()).then_some(reason)
}

/// The verdict on a packet refused for `reason`: a reset for a request or a banned
/// source's segment on an HTTP connection (`judge` makes it, or drops the packet if the
/// rewrite fails), else a drop.
#[inline(always)]
fn refuse(reason: Reason, reset: bool) -> Action {
    finish(reason);
    if reset { Action::Reset } else { Action::Drop }
}

/// What a blocked or banned source's packet gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Dropped: anything but a connection to an HTTP port, and its SYNs and fragments.
    Drop,
    /// A segment with data on a connection to an HTTP port (a request, or more of one):
    /// the connection is reset, as for a refused route, so that neither side waits.
    Reset,
    /// A segment without data on a connection to an HTTP port (an ACK, a FIN) is spared:
    /// the response in flight, often the very one that made the ban, is delivered and the
    /// connection closes. Dropping the client's ACKs would leave the server resending it.
    Spare,
}

impl Refusal {
    #[inline(always)]
    fn of<F: Frame, const S: bool>(frame: &F, policy: PolicySet<S>, pkt: &Packet) -> Refusal {
        if pkt.syn
            || pkt.more_fragments
            || pkt.l4_off == 0
            || pkt.protocol != IPPROTO_TCP
            || rules_for(policy, pkt).http == HTTP_NONE
        {
            return Refusal::Drop;
        }
        if frame.carries_data(pkt) {
            Refusal::Reset
        } else {
            Refusal::Spare
        }
    }
}

/// Rules scoped to the packet's port take precedence over rules for its whole class.
#[inline(always)]
fn rules_for<const S: bool>(policy: PolicySet<S>, pkt: &Packet) -> PortRules {
    policy.rules_for(pkt.class, pkt.has_port.then_some(pkt.dport))
}

/// Runs the packet, which arrived on `ifindex`, through one rule's bucket; true when it
/// must be refused (for `reason`; `reset`: by a reset, else a drop).
#[inline(always)]
fn limit<const S: bool>(
    policy: PolicySet<S>,
    pkt: &Packet,
    rule: u32,
    reason: Reason,
    ifindex: u32,
    reset: bool,
) -> bool {
    limit_in(policy, pkt, Charge::Own, rule, reason, ifindex, reset)
}

/// Whose bucket a packet takes a token from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Charge {
    /// Its source group's.
    Own,
    /// The pool that requests on connections not verified as their client's share
    /// (`judge_route`): never a ban, since the source may be anyone.
    Pool,
}

/// The pool's source: an address no packet comes from (ff00::/8 is multicast).
const POOL_SOURCE: [u32; 4] = [u32::MAX; 4];

/// `limit`, charging the bucket `charge` names.
#[inline(always)]
fn limit_in<const S: bool>(
    policy: PolicySet<S>,
    pkt: &Packet,
    charge: Charge,
    rule: u32,
    reason: Reason,
    ifindex: u32,
    reset: bool,
) -> bool {
    let Some(cfg) = policy.rule(rule) else {
        return false;
    };
    if cfg.interval_ns == 0 {
        return false;
    }
    let pool;
    let charged = match charge {
        Charge::Own => pkt,
        Charge::Pool => {
            pool = Packet {
                src: POOL_SOURCE,
                v4: false,
                ..*pkt
            };
            &pool
        }
    };
    // The bucket reads the precise clock only where its rule needs it (see `take`).
    let coarse = clock::coarse_ns();
    match ratelimit::take(rule, cfg, charged, coarse) {
        Outcome::Within => {
            counters::rule(rule, RuleOutcome::Passed);
            false
        }
        Outcome::Over { escalate } => {
            if escalate && charge == Charge::Own {
                bans::make(pkt, rule, cfg, coarse, ifindex);
            }
            enforce(pkt, reason, rule, cfg.mode, ifindex, reset, coarse)
        }
    }
}
