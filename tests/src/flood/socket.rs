//! The generator's sending end: a raw AF_PACKET socket bound to one interface that sends
//! whole Ethernet frames out of it.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::Result;

/// A raw AF_PACKET socket that sends out of one interface.
pub struct PacketSocket {
    socket: OwnedFd,
}

/// What went wrong: what was being done, and the errno (io::Error shows it as "os error N").
fn os_error(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", io::Error::last_os_error())
}

impl PacketSocket {
    /// A socket that sends out of interface `ifindex` of the calling thread's namespace.
    pub fn open(ifindex: u32) -> Result<Self> {
        // Protocol 0: the socket only sends and receives nothing, so it adds no work to the
        // interface's receive path.
        // SAFETY: plain system call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_error("socket(AF_PACKET, SOCK_RAW)"));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        // SAFETY: `address` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error(&format!(
                "bind of an AF_PACKET socket to ifindex {ifindex}"
            )));
        }
        Ok(Self { socket })
    }

    /// Sends `frame`, a whole Ethernet frame: false if the interface dropped it because the
    /// ring of its other end was full (ENOBUFS), which is then the caller's to wait out.
    pub fn send(&self, frame: &[u8]) -> Result<bool> {
        // SAFETY: `frame` is valid for its length.
        let rc = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(true);
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
            return Ok(false);
        }
        Err(os_error("send on an AF_PACKET socket"))
    }
}
