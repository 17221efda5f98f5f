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

/// Receives one datagram of a SOCK_SEQPACKET socket into `buf`, with the descriptors it
/// carries (`SCM_RIGHTS`, room for `MAX_FDS`, close-on-exec), each owned by the caller from
/// here on.
/// Returns the bytes received, the descriptors, and whether the kernel truncated the data or
/// the ancillary data (the message cannot be trusted then; its descriptors are still owned and
/// closed on drop).
pub fn recv_with_fds<const MAX_FDS: usize>(
    fd: RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Vec<OwnedFd>, bool)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw.into_iter().map(|fd| {
                // SAFETY: the kernel installed `fd` in our table for this very message, and
                // nothing else has seen it: wrapping it makes this the single owner that
                // closes it. No caller can pass a descriptor in here.
                unsafe { OwnedFd::from_raw_fd(fd) }
            }));
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok((msg.bytes, fds, truncated))
}

/// Registers an owned socket with the current tokio runtime's reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is an open descriptor that stays open, and keeps returning the same raw
    // fd, until the `AsyncFd` that now owns it is dropped or unwrapped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
