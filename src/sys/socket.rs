//! Socket options and ancillary data that the safe crates do not cover.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt};

/// The destination a REDIRECT-ed connection was originally sent to (`SO_ORIGINAL_DST`), IPv4
/// first, then IPv6. `None` when the kernel has no NAT record (e.g. TPROXY or a direct call).
pub fn original_dst<S: std::os::fd::AsFd>(sock: &S) -> Option<SocketAddr> {
    if let Ok(v4) = getsockopt(sock, sockopt::OriginalDst) {
        let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
        return Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(v4.sin_port),
        )));
    }
    if let Ok(v6) = getsockopt(sock, sockopt::Ip6tOriginalDst) {
        let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
        return Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(v6.sin6_port),
            0,
            0,
        )));
    }
    None
}

/// Takes ownership of file descriptors received through `SCM_RIGHTS`.
pub fn own_received_fds(fds: &[RawFd]) -> Vec<OwnedFd> {
    fds.iter()
        .map(|&fd| {
            // SAFETY: the kernel just installed `fd` in our table for this message and nothing
            // else refers to it; wrapping it makes this the single owner that closes it.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

/// Registers an owned socket with the current tokio runtime's reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is an open descriptor that stays open, and keeps returning the same raw
    // fd, until the `AsyncFd` that now owns it is dropped or unwrapped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
