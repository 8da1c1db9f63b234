//! The frame a program judges, as the judge needs it beyond its parsed headers: bytes at an
//! offset (linear or not), its length, and its rewrite into a reset. One implementation per
//! hook: XDP's helpers work on the `xdp_md`, TC's on the skb.

use aya_ebpf::{
    bindings::BPF_CSUM_LEVEL_RESET,
    helpers::{
        bpf_csum_level, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    programs::{TcContext, XdpContext},
};

use crate::reset;

pub trait Frame {
    /// Copies `len` bytes at `offset` to `dst`; false when the frame has fewer.
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
    /// The frame's length in bytes.
    fn len(&self) -> u32;
    /// Rewrites the frame, a TCP segment, into a RST toward its receiver (see `reset`);
    /// false when that failed and the frame must be dropped.
    fn reset(&self) -> bool;
}

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
        let Some(segment) = reset::Segment::of(self.0.data(), self.0.data_end()) else {
            return false;
        };
        let shrink = segment.cut_len() as i32 - self.len() as i32;
        // SAFETY: the helper checks the new length against the frame.
        if shrink > 0 || unsafe { bpf_xdp_adjust_tail(self.0.ctx, shrink) } != 0 {
            return false;
        }
        segment.rewrite(self.0.data(), self.0.data_end())
    }
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
        let Some(segment) = reset::Segment::of(self.0.data(), self.0.data_end()) else {
            return false;
        };
        let len = segment.cut_len();
        let skb = self.0.skb.skb.cast();
        // SAFETY: the helpers check their arguments against the skb.
        let resized =
            unsafe { bpf_skb_change_tail(skb, len, 0) == 0 && bpf_skb_pull_data(skb, len) == 0 };
        if !resized || !segment.rewrite(self.0.data(), self.0.data_end()) {
            return false;
        }
        // The rewrite changed bytes a checksum the NIC or veth vouched for covered: have
        // the stack check the (correct) checksums itself.
        // SAFETY: as above.
        unsafe { bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET as u64) };
        true
    }
}
