//! The frame a program judges, as the judge needs it beyond its parsed headers: bytes at an
//! offset (linear or not), its length, and its rewrite into a reset. One implementation per
//! hook: XDP's helpers work on the `xdp_md`, TC's on the skb.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_CSUM_LEVEL_RESET, xdp_md},
    helpers::{
        bpf_csum_level, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    programs::{TcContext, XdpContext},
};

use agent_common::Action;

use crate::{
    judge,
    parse::Packet,
    policy_set,
    reset::{self, Connection},
};

pub trait Frame {
    /// Copies `len` bytes at `offset` to `dst`; false when the frame has fewer.
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
    /// The frame's length in bytes.
    fn len(&self) -> u32;
    /// Rewrites the frame, a TCP segment, into a RST toward its receiver (see `reset`);
    /// false when that failed and the frame must be dropped.
    fn reset(&self) -> bool;
    /// True when the TCP segment `pkt` carries data: bytes past its headers within both
    /// the frame and its IP header's length (a frame may be padded past that length, or
    /// cut short of it).
    #[inline(always)]
    fn carries_data(&self, pkt: &Packet) -> bool {
        let l3 = u32::from(pkt.l3_off);
        // IPv4: the total length, 2 bytes in; IPv6: the payload length, 4 bytes in, after
        // the 40-byte header.
        let (field, base) = if pkt.ip6 {
            (l3 + 4, l3 + 40)
        } else {
            (l3 + 2, l3)
        };
        let mut length = [0u8; 2];
        if !self.load(field, length.as_mut_ptr(), 2) {
            return false;
        }
        let length = u32::from(u16::from_be_bytes(length));
        // 0: a GSO packet too large for the field (BIG TCP); the frame's length holds.
        let end = if length == 0 {
            self.len()
        } else {
            (base + length).min(self.len())
        };
        end > u32::from(pkt.payload_off)
    }
    /// `pkt`'s connection, sequence and acknowledgment numbers (see
    /// `reset::Segment::connection`).
    fn connection(&self, pkt: &Packet) -> Option<Connection>;
    /// As `connection`, for a server's segment: its connection as its client names it
    /// (see `reset::Segment::reply_connection`).
    fn reply_connection(&self, pkt: &Packet) -> Option<Connection>;
    /// The judge's verdict on the IP packet `pkt` of this frame, arrived on `ifindex`
    /// (`judge::judge_ip`, through the global function of the hook and the policy set in
    /// force).
    fn judge_ip(&self, pkt: &Packet, ifindex: u32) -> Action;
}

// The rewrite into a reset is a global function of each program: the verifier checks it
// once, on its own, rather than once for every path of the judge that reaches it (it was
// half of all the verifier walked). Its argument is the context, its answer a number.
// build.rs exports it to the linker, which would otherwise make it static.

pub struct Xdp<'a>(pub &'a XdpContext);

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks `offset` and `len` against the frame, and the verifier
        // checks `dst` for `len` bytes.
        unsafe { bpf_xdp_load_bytes(self.0.ctx, offset, dst.cast(), len) == 0 }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn reset(&self) -> bool {
        portcullis_reset_xdp(self.0.ctx) != 0
    }

    #[inline(always)]
    fn judge_ip(&self, pkt: &Packet, ifindex: u32) -> Action {
        let code = if policy_set::second_in_force() {
            judge::portcullis_judge_xdp_1(self.0.ctx, pkt, ifindex)
        } else {
            judge::portcullis_judge_xdp_0(self.0.ctx, pkt, ifindex)
        };
        judge::action_of(code)
    }

    #[inline(always)]
    fn connection(&self, pkt: &Packet) -> Option<Connection> {
        reset::Segment::connection(self.0.data(), self.0.data_end(), pkt)
    }

    #[inline(always)]
    fn reply_connection(&self, pkt: &Packet) -> Option<Connection> {
        reset::Segment::reply_connection(self.0.data(), self.0.data_end(), pkt)
    }
}

/// `Frame::reset` for XDP: 1 when the frame is now the RST (or bare ACK), 0 otherwise.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portcullis_reset_xdp(ctx: *mut xdp_md) -> u32 {
    if ctx.is_null() {
        return 0;
    }
    let ctx = XdpContext::new(ctx);
    let Some(segment) = reset::Segment::of(ctx.data(), ctx.data_end()) else {
        return 0;
    };
    let len = (ctx.data_end() - ctx.data()) as i32;
    let shrink = segment.cut_len() as i32 - len;
    // SAFETY: the helper checks the new length against the frame.
    if shrink > 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
        return 0;
    }
    u32::from(segment.rewrite(ctx.data(), ctx.data_end()))
}

pub struct Tc<'a>(pub &'a TcContext);

impl Frame for Tc<'_> {
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for XDP; the helper reads non-linear data too.
        unsafe { bpf_skb_load_bytes(self.0.skb.skb.cast(), offset, dst.cast(), len) == 0 }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn reset(&self) -> bool {
        portcullis_reset_tc(self.0.skb.skb) != 0
    }

    #[inline(always)]
    fn judge_ip(&self, pkt: &Packet, ifindex: u32) -> Action {
        let code = if policy_set::second_in_force() {
            judge::portcullis_judge_tc_1(self.0.skb.skb, pkt, ifindex)
        } else {
            judge::portcullis_judge_tc_0(self.0.skb.skb, pkt, ifindex)
        };
        judge::action_of(code)
    }

    #[inline(always)]
    fn connection(&self, pkt: &Packet) -> Option<Connection> {
        reset::Segment::connection(self.0.data(), self.0.data_end(), pkt)
    }

    #[inline(always)]
    fn reply_connection(&self, pkt: &Packet) -> Option<Connection> {
        reset::Segment::reply_connection(self.0.data(), self.0.data_end(), pkt)
    }
}

/// `Frame::reset` for TC: 1 when the skb is now the RST (or bare ACK), 0 otherwise.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portcullis_reset_tc(skb: *mut __sk_buff) -> u32 {
    if skb.is_null() {
        return 0;
    }
    let ctx = TcContext::new(skb);
    let Some(segment) = reset::Segment::of(ctx.data(), ctx.data_end()) else {
        return 0;
    };
    let len = segment.cut_len();
    let skb = skb.cast();
    // SAFETY: the helpers check their arguments against the skb.
    let resized =
        unsafe { bpf_skb_change_tail(skb, len, 0) == 0 && bpf_skb_pull_data(skb, len) == 0 };
    if !resized || !segment.rewrite(ctx.data(), ctx.data_end()) {
        return 0;
    }
    // The rewrite changed bytes a checksum the NIC or veth vouched for covered: have the
    // stack check the (correct) checksums itself.
    // SAFETY: as above.
    unsafe { bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET as u64) };
    1
}
