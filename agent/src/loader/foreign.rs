//! Removing an XDP program that another tool attached through netlink (`ip link set ...
//! xdp`, older loaders), for `run --replace-foreign-xdp`: one `RTM_SETLINK` with
//! `IFLA_XDP_FD` = -1. aya 0.14 does not expose it, so the message is built here, with the
//! uapi layout written out. The socket belongs to the caller's network namespace, so only
//! that namespace's interface is touched.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

// include/uapi/linux/if_link.h
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Sets the netlink XDP program of `ifindex` in one mode (`fd` -1 removes it).
pub fn netlink_set_xdp(ifindex: u32, fd: i32, mode_flags: u32) -> io::Result<()> {
    let mut xdp = Vec::new();
    push_attr(&mut xdp, IFLA_XDP_FD, &fd.to_ne_bytes());
    push_attr(&mut xdp, IFLA_XDP_FLAGS, &mode_flags.to_ne_bytes());
    let mut body = Vec::new();
    // struct ifinfomsg: family, pad, type, index, flags, change.
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut body, IFLA_XDP | libc::NLA_F_NESTED as u16, &xdp);
    let mut msg = Vec::new();
    let len = 16 + body.len();
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&body);

    // SAFETY: plain socket calls on a descriptor we own; buffers outlive the calls.
    unsafe {
        let sock = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(sock);
        if libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 4096];
        let n = libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // An ack is an NLMSG_ERROR whose error code is 0.
        let kind = u16::from_ne_bytes([reply[4], reply[5]]);
        if kind == libc::NLMSG_ERROR as u16 && n >= 20 {
            let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
    }
    Ok(())
}

/// Removes a netlink-attached XDP program from `ifindex`, in generic and in driver mode.
/// A program held by another process's bpf link is left alone: severing a link someone
/// else owns is not ours to do, and the attach that follows still refuses.
pub fn remove_xdp(ifindex: u32) -> io::Result<()> {
    for flags in [XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE] {
        match netlink_set_xdp(ifindex, -1, flags) {
            Ok(()) => {}
            // A device without native XDP refuses driver mode: nothing to remove there.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
