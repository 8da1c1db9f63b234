//! Getting the kernel programs running, one job a module: the embedded object and its maps
//! (`object`), the BPF filesystem (`bpffs`), the pin directory and its lock (`pin_dir`),
//! attaching to interfaces with care for other tools' programs (`attach`, `foreign`), and
//! taking over what a previous agent left attached (`takeover`).

mod attach;
mod bpffs;
pub mod foreign;
mod object;
mod pin_dir;
mod takeover;

pub use attach::{Attachment, Hook, XdpModeOption, attach, attach_egress, ifindex};
pub use bpffs::ensure_bpffs;
pub use object::{
    EBPF_OBJECT, TC_EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM, check_pinned_maps, load,
    load_unpinned, unpin_replaced,
};
pub use pin_dir::{DEFAULT_PIN_DIR, PinDirLock, links_dir, maps_dir, maps_pinned, remove_pins};
pub use takeover::{attached_program, detach_others};
