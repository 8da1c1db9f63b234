//! Programs for the tests and `cargo xtask bench` only. They live apart from the agent's
//! object so that what users run (and the image ships) holds only the agent's programs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_BROADCAST, xdp_action},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, DevMap},
    programs::XdpContext,
};
use portcullis_test_ebpf::FANOUT_COPIES;

/// The floor: an XDP program that only passes. The benchmark reports the real program's
/// cost next to this one's.
#[xdp]
pub fn portcullis_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The flood benchmark's ceiling: reads the frame's IPv4 source address, as any filter
/// must (the first touch of a frame's data is a cache miss), and drops the frame. What the
/// test bed handles with a filter that costs nothing more than that.
#[xdp]
pub fn portcullis_drop_all(ctx: XdpContext) -> u32 {
    read_source_and_drop(&ctx)
}

#[inline(always)]
fn read_source_and_drop(ctx: &XdpContext) -> u32 {
    let data = ctx.data();
    if data + IPV4_SOURCE + 4 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the bounds were checked above.
    let source = unsafe { ((data + IPV4_SOURCE) as *const u32).read_unaligned() };
    // Keep the read: a source of all ones passes, which the benchmark never sends.
    if source == u32::MAX {
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_DROP
}

/// Precise clock reads the busy ceiling makes: each is a helper call and a TSC read, some
/// 20 ns here, so the program runs about 80 ns longer than the ceiling.
const BUSY_CLOCK_READS: u32 = 4;

/// The ceiling with known work added (`BUSY_CLOCK_READS` clock reads): it calibrates the
/// bed, showing how much flood time a known amount of program time costs.
#[xdp]
pub fn portcullis_drop_all_busy(ctx: XdpContext) -> u32 {
    let mut sum = 0u64;
    for _ in 0..BUSY_CLOCK_READS {
        // SAFETY: a helper without arguments.
        sum = sum.wrapping_add(unsafe { bpf_ktime_get_ns() });
    }
    // Keep the reads: a sum of zero passes, which four clock reads never give.
    if sum == 0 {
        return xdp_action::XDP_PASS;
    }
    read_source_and_drop(&ctx)
}

/// Where the fan-out sends each frame: `FANOUT_COPIES` entries, each the client's veth (and,
/// for the spoofing floods, a program that gives the copy its source).
#[map]
static FANOUT: DevMap = DevMap::with_max_entries(FANOUT_COPIES, 0);

/// The flood generator's fan-out, on the generator's own veth in the client namespace: each
/// frame the generator's socket sends leaves the client's veth as `FANOUT_COPIES` frames
/// (a broadcast redirect to every entry of `FANOUT`), which the server end receives as XDP
/// frames, as it would from a NIC. One system call and one socket buffer make many frames,
/// so the generator offers more than any receiving side here takes.
#[xdp]
pub fn portcullis_flood(_ctx: XdpContext) -> u32 {
    match FANOUT.redirect(0, u64::from(BPF_F_BROADCAST)) {
        Ok(action) | Err(action) => action,
    }
}

/// A `FANOUT` entry's program for the spoofed flood: each copy gets a random source address
/// in the /12 of the frame's own source.
#[xdp(map = "devmap")]
pub fn portcullis_flood_spoofed(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    set_source_bits(&ctx, unsafe { bpf_get_prandom_u32() })
}

/// Copies the sequential flood has sent, the next source's low bits.
#[map]
static SEQUENCE: Array<u32> = Array::with_max_entries(1, 0);

/// A `FANOUT` entry's program for the sequential flood: the sources follow each other through
/// the /12, so each of its 1,048,576 addresses sends one frame before any sends a second.
#[xdp(map = "devmap")]
pub fn portcullis_flood_sequential(ctx: XdpContext) -> u32 {
    let Some(next) = SEQUENCE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a pointer from a successful lookup; one generator thread runs at a time, and
    // its copies are sent one after another on its CPU.
    let n = unsafe {
        let n = *next;
        *next = n.wrapping_add(1);
        n
    };
    set_source_bits(&ctx, n)
}

/// Offset of the IPv4 header checksum and source address in the generator's frames
/// (Ethernet, then IPv4 without options).
const IPV4_CHECKSUM: usize = 14 + 10;
const IPV4_SOURCE: usize = 14 + 12;
/// Bits of the source address drawn at random: 2^20 = 1,048,576 sources.
const SPOOFED_BITS: u32 = 0x000f_ffff;

/// Puts `bits` in the low bits of the copy's IPv4 source and fixes its header checksum, so
/// that the kernel's IP stack (iptables, nftables) accepts it too; then lets it go.
#[inline(always)]
fn set_source_bits(ctx: &XdpContext, bits: u32) -> u32 {
    let data = ctx.data();
    if data + IPV4_SOURCE + 4 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the bounds were checked above; IP header fields may be unaligned.
    unsafe {
        let source = (data + IPV4_SOURCE) as *mut u32;
        let checksum = (data + IPV4_CHECKSUM) as *mut u16;
        let old = u32::from_be(source.read_unaligned());
        let new = (old & !SPOOFED_BITS) | (bits & SPOOFED_BITS);
        source.write_unaligned(new.to_be());
        let sum = u16::from_be(checksum.read_unaligned());
        checksum.write_unaligned(checksum_update(sum, old, new).to_be());
    }
    xdp_action::XDP_PASS
}

/// RFC 1624 incremental update of a ones' complement checksum when one 32-bit word of the
/// summed data changes from `old` to `new`: HC' = ~(~HC + ~m + m').
fn checksum_update(checksum: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!checksum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
