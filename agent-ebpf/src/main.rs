//! Portcullis kernel programs. Both entry points run the same decision (`judge`) and only
//! translate its verdict for their hook.
#![no_std]
#![no_main]
// The bucket update needs compare-and-exchange, which the BPF target only offers this way.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod accepted;
mod acl;
mod admission;
mod atomic;
mod bans;
mod blocks;
mod buckets;
mod by_source;
mod clock;
mod counters;
mod decisions;
mod empty;
mod evasion;
mod events;
mod frame;
mod http;
mod judge;
mod maps;
mod parse;
mod policy_set;
mod ratelimit;
mod reset;
mod responses;

use agent_common::Action;
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// XDP entry point: `XDP_DROP` for dropped packets, `XDP_PASS` for everything else.
#[xdp]
pub fn portcullis_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let parsed = parse::parse(ctx.data(), ctx.data_end());
    match judge::judge(&frame::Xdp(&ctx), &parsed, ifindex) {
        // A reset was rewritten into a RST by the judge: it goes up to the stack.
        Action::Pass | Action::Reset => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
    }
}

/// Linear bytes that hold the headers of nearly every packet: Ethernet, two VLAN tags, IPv6
/// with a few extension headers, TCP. Pulling more would copy payload for nothing.
const TC_PULL_BYTES: u32 = 256;

/// TC ingress entry point: `TC_ACT_SHOT` for dropped packets; for passed ones
/// `TC_ACT_UNSPEC`, which lets later programs on the hook (tcx or cls_bpf) run.
#[classifier]
pub fn portcullis_tc(ctx: TcContext) -> i32 {
    // Direct packet access only covers the linear part of the skb. Pull the usual headers
    // in when they are not all there; most skbs already have them.
    let wanted = ctx.len().min(TC_PULL_BYTES) as usize;
    if ctx.data_end() - ctx.data() < wanted {
        let _ = ctx.pull_data(wanted as u32);
    }
    // Headers that run past the linear part (a long IPv6 extension-header chain) would be
    // judged truncated here while XDP, which sees the whole frame, reads them: for a packet
    // with more bytes than are linear, a first parse only asks whether the headers were cut
    // short, and if so everything the parser can read is pulled in before the parse that
    // counts. (The first result is not kept and judged: carried across the helper call,
    // LLVM spills the enum's unset bytes, which the verifier refuses to read.)
    if ctx.data_end() - ctx.data() < ctx.len() as usize
        && parse::parse(ctx.data(), ctx.data_end()).truncated()
    {
        let _ = ctx.pull_data(ctx.len().min(parse::MAX_HEADER_BYTES));
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let parsed = parse::parse(ctx.data(), ctx.data_end());
    let action = judge::judge(&frame::Tc(&ctx), &parsed, ifindex);
    match action {
        Action::Pass | Action::Reset => TC_ACT_UNSPEC,
        Action::Drop => TC_ACT_SHOT,
    }
}

/// TC egress entry point: counts the server's HTTP responses toward response rules (see
/// `responses`) and always lets the packet go (`TC_ACT_UNSPEC`).
#[classifier]
pub fn portcullis_tc_egress(ctx: TcContext) -> i32 {
    // Locally written segments carry their headers in the linear part: nothing to pull.
    if let parse::Parsed::Ip(pkt) = parse::parse(ctx.data(), ctx.data_end()) {
        // SAFETY: the context pointer is valid for the whole program run.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        responses::count(&frame::Tc(&ctx), &pkt, ifindex);
    }
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
