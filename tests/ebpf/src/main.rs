//! Programs for the tests and `cargo xtask bench` only. They live apart from the agent's
//! object so that what users run (and the image ships) holds only the agent's programs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

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

/// The flood generator: run with BPF_F_TEST_XDP_LIVE_FRAMES on one end of a veth pair, it
/// sends every frame out of that interface, to the filter on the other end.
#[xdp]
pub fn portcullis_flood(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Offset of the IPv4 header checksum and source address in the generator's frames
/// (Ethernet, then IPv4 without options).
const IPV4_CHECKSUM: usize = 14 + 10;
const IPV4_SOURCE: usize = 14 + 12;
/// Bits of the source address drawn at random: 2^20 = 1,048,576 sources.
const SPOOFED_BITS: u32 = 0x000f_ffff;

/// The flood generator with spoofed sources: as `portcullis_flood`, but each frame gets a
/// random source address in the /12 of the frame's own source, with its header checksum
/// fixed so that the kernel's IP stack (iptables, nftables) accepts it too.
#[xdp]
pub fn portcullis_flood_spoofed(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    set_source_bits(&ctx, unsafe { bpf_get_prandom_u32() })
}

/// Frames the sequential generator has sent, the next source's low bits.
#[map]
static SEQUENCE: Array<u32> = Array::with_max_entries(1, 0);

/// As `portcullis_flood_spoofed`, but the sources follow each other through the /12: each
/// of its 1,048,576 addresses sends one frame before any sends a second.
#[xdp]
pub fn portcullis_flood_sequential(ctx: XdpContext) -> u32 {
    let Some(next) = SEQUENCE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a pointer from a successful lookup; one generator thread runs at a time.
    let n = unsafe {
        let n = *next;
        *next = n.wrapping_add(1);
        n
    };
    set_source_bits(&ctx, n)
}

/// Puts `bits` in the low bits of the frame's IPv4 source, fixes its checksum and sends it.
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
    xdp_action::XDP_TX
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
