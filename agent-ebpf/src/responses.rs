//! Response rules, on TC egress: a TCP segment leaving from an HTTP port whose payload
//! starts a status line ("HTTP/1.x NNN"), on a connection the server accepted
//! (`accepted`), is counted for each response rule of its status, per client source group
//! (the segment's destination). The response that completes a
//! rule's `ban.after` within `ban.within` bans the group in the kernel's ban map, where XDP
//! and TC ingress find it from the client's next packet: no round trip through the agent.
//!
//! The server writes these bytes, so how a client shapes its requests cannot hide them.
//! TC egress sees a GSO skb before it is segmented: a response is one skb whatever its
//! size, counted once.

use agent_common::{
    CLASS_TCP,
    http::{HTTP_NONE, RULES_PER_STATUS, STATUS_CODES},
};

use crate::{
    accepted, bans, clock, counters,
    counters::RuleOutcome,
    frame::Frame,
    parse::{Packet, ip::V4_MAPPED_WORD, l4::IPPROTO_TCP},
    policy_set::{self, PolicySet},
    ratelimit,
};

/// "HTTP/1." as the first seven bytes of a status line, little-endian, and their mask.
const STATUS_LINE_START: u64 = u64::from_le_bytes(*b"HTTP/1.\0");
const STATUS_LINE_MASK: u64 = 0x00ff_ffff_ffff_ffff;
/// "HTTP/1.x NNN": the bytes read, the status being the last three.
const STATUS_LINE_BYTES: usize = 12;

/// Counts the response `pkt`, leaving on `ifindex`, toward its status's response rules.
#[inline(always)]
pub fn count<F: Frame>(frame: &F, pkt: &Packet, ifindex: u32) {
    if pkt.protocol != IPPROTO_TCP || pkt.l4_off == 0 || pkt.malformed.is_some() {
        return;
    }
    let Some(sport) = source_port(frame, pkt) else {
        return;
    };
    if policy_set::second_in_force() {
        count_by(frame, PolicySet::<true>, pkt, sport, ifindex);
    } else {
        count_by(frame, PolicySet::<false>, pkt, sport, ifindex);
    }
}

/// `count` with the policy set in force, for a segment from `sport`.
#[inline(always)]
fn count_by<F: Frame, const S: bool>(
    frame: &F,
    policy: PolicySet<S>,
    pkt: &Packet,
    sport: u16,
    ifindex: u32,
) {
    if policy.rules_for(CLASS_TCP, Some(sport)).http == HTTP_NONE
        || accepted::note_syn_ack(frame, pkt)
        || pkt.payload_off == 0
    {
        return;
    }
    let Some(status) = status(frame, pkt) else {
        return;
    };
    let Some(rules) = policy.status_rules().get(status) else {
        return;
    };
    let rules = rules.rules;
    if rules[0] == 0 || !accepted::was_accepted(frame, pkt) {
        return;
    }
    let Some(client) = client(frame, pkt, sport) else {
        return;
    };
    let now = clock::precise_ns();
    for rule in rules.iter().take(RULES_PER_STATUS) {
        if *rule != 0 {
            charge(policy, &client, *rule, ifindex, now);
        }
    }
}

/// One response of `client`'s toward response rule `rule`.
#[inline(always)]
fn charge<const S: bool>(policy: PolicySet<S>, client: &Packet, rule: u32, ifindex: u32, now: u64) {
    let Some(cfg) = policy.rule(rule) else {
        return;
    };
    if cfg.ban_for_ns == 0 {
        return;
    }
    counters::rule(rule, RuleOutcome::Passed);
    if ratelimit::count_toward_ban(rule, cfg, client, now) {
        bans::make(client, rule, cfg, now, ifindex);
    }
}

/// The TCP source port of the segment, in host order.
#[inline(always)]
fn source_port<F: Frame>(frame: &F, pkt: &Packet) -> Option<u16> {
    let mut port = [0u8; 2];
    frame
        .load(u32::from(pkt.l4_off), port.as_mut_ptr(), 2)
        .then(|| u16::from_be_bytes(port))
}

/// The status code of the status line the payload starts, if it starts one.
#[inline(always)]
fn status<F: Frame>(frame: &F, pkt: &Packet) -> Option<u32> {
    let mut line = [0u8; STATUS_LINE_BYTES];
    if !frame.load(
        u32::from(pkt.payload_off),
        line.as_mut_ptr(),
        STATUS_LINE_BYTES as u32,
    ) {
        return None;
    }
    let start = u64::from_le_bytes([
        line[0], line[1], line[2], line[3], line[4], line[5], line[6], line[7],
    ]);
    if start & STATUS_LINE_MASK != STATUS_LINE_START || line[8] != b' ' {
        return None;
    }
    let digit = |byte: u8| byte.is_ascii_digit().then(|| u32::from(byte - b'0'));
    let status = digit(line[9])? * 100 + digit(line[10])? * 10 + digit(line[11])?;
    (status < STATUS_CODES).then_some(status)
}

/// The client the segment goes to, as a `Packet` whose source is the client (the
/// destination address) and whose port is the server's: what the ban and its event take.
#[inline(always)]
fn client<F: Frame>(frame: &F, pkt: &Packet, sport: u16) -> Option<Packet> {
    let mut dst = [0u32; 4];
    let l3 = u32::from(pkt.l3_off);
    let v4 = if pkt.ip6 {
        // The destination address: 24 bytes into the IPv6 header.
        if !frame.load(l3 + 24, dst.as_mut_ptr().cast(), 16) {
            return None;
        }
        dst[0] == 0 && dst[1] == 0 && dst[2] == V4_MAPPED_WORD
    } else {
        dst[2] = V4_MAPPED_WORD;
        // 16 bytes into the IPv4 header.
        if !frame.load(l3 + 16, dst[3..].as_mut_ptr().cast(), 4) {
            return None;
        }
        true
    };
    Some(Packet {
        src: dst,
        v4,
        dport: sport,
        ..*pkt
    })
}
