//! The programs only tests and the benchmark load (`tests/ebpf`): they are not in the
//! agent's object, so users never run them and the image does not ship them.

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader, programs::Xdp};

/// The object, built by `build.rs` from `tests/ebpf` in release mode.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-test"));

/// An XDP program that only passes: the per-packet benchmark's floor.
pub const FLOOR: &str = "portcullis_floor";
/// Reads a frame's source and drops it: the flood benchmark's ceiling.
pub const DROP_ALL: &str = "portcullis_drop_all";
/// The ceiling with a known amount of work added: the flood benchmark's calibration.
pub const DROP_ALL_BUSY: &str = "portcullis_drop_all_busy";
/// The flood generator's fan-out: sends each frame on as `FANOUT_COPIES` frames.
pub const FLOOD: &str = "portcullis_flood";
/// The fan-out's entry program for a random source in the frame's /12 for each frame.
pub const FLOOD_SPOOFED: &str = "portcullis_flood_spoofed";

/// The fan-out's entry program for each frame from the next source of the frame's /12.
pub const FLOOD_SEQUENTIAL: &str = "portcullis_flood_sequential";

/// Every program of the object.
pub const ALL: [&str; 6] = [
    FLOOR,
    DROP_ALL,
    DROP_ALL_BUSY,
    FLOOD,
    FLOOD_SPOOFED,
    FLOOD_SEQUENTIAL,
];

/// The object with the XDP programs `names` loaded.
pub fn load(names: &[&str]) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .context("loading the test programs' object")?;
    for name in names {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the verifier rejected {name}"))?;
    }
    Ok(ebpf)
}
