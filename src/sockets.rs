//! Socket creation for one proxy instance: in the pod's network namespace (shared mode) or
//! ztun's own (dedicated mode), with the packet mark that the pod's redirection rules skip.
//!
//! Every socket ztun opens on behalf of a pod, listeners and upstream connections alike, comes
//! from here, so no socket can be created in the wrong namespace or without its mark.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::Keepalive;
use crate::sys::Netns;

/// Listen backlog for pod listeners.
const BACKLOG: i32 = 128;

/// Whether a listener asks for `IP_TRANSPARENT` (which needs `CAP_NET_ADMIN` or
/// `CAP_NET_RAW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transparency {
    /// Not asked for.
    Off,
    /// Asked for; a refusal leaves the listener plain.
    BestEffort,
    /// Asked for; a refusal fails the listener.
    Required,
}

/// Creates sockets for one proxy instance.
#[derive(Clone)]
pub struct Sockets {
    netns: Option<Arc<Netns>>,
    mark: Option<u32>,
    reuse_port: bool,
    keepalive: Keepalive,
    connect_timeout: Duration,
}

impl Sockets {
    /// Sockets in `netns` (or the current namespace when `None`), marked with `mark`.
    pub fn new(
        netns: Option<Arc<Netns>>,
        mark: Option<u32>,
        reuse_port: bool,
        keepalive: Keepalive,
        connect_timeout: Duration,
    ) -> Self {
        Sockets {
            netns,
            mark,
            reuse_port,
            keepalive,
            connect_timeout,
        }
    }

    /// Sockets in the current namespace, unmarked, without keepalive, with a 5 s connect
    /// timeout: for unit tests on loopback.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let keepalive = Keepalive {
            enabled: false,
            time: Duration::from_secs(180),
            interval: Duration::from_secs(180),
            retries: 9,
            user_timeout_enabled: false,
        };
        Sockets::new(None, None, false, keepalive, Duration::from_secs(5))
    }

    /// Whether listeners join an SO_REUSEPORT group (`INPOD_PORT_REUSE`): then several
    /// may listen on one port.
    pub fn reuses_ports(&self) -> bool {
        self.reuse_port
    }

    fn in_ns<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match &self.netns {
            Some(ns) => ns.run(f)?,
            None => f(),
        }
    }

    /// A TCP listener on `addr`, transparent when asked (needed for TPROXY captures).
    /// `[::]` listeners accept IPv4 too; if the namespace has no IPv6, falls back to `0.0.0.0`.
    /// The listener is not yet registered with a runtime: register it (`from_std`) on the
    /// runtime that will serve it.
    pub fn std_listener(
        &self,
        addr: SocketAddr,
        transparent: bool,
    ) -> io::Result<std::net::TcpListener> {
        let transparency = if transparent {
            Transparency::BestEffort
        } else {
            Transparency::Off
        };
        self.capture_listener(addr, transparency).map(|(l, _)| l)
    }

    /// Like [`Sockets::std_listener`], with `transparency`; also says whether the listener
    /// is transparent.
    pub fn capture_listener(
        &self,
        addr: SocketAddr,
        transparency: Transparency,
    ) -> io::Result<(std::net::TcpListener, bool)> {
        self.in_ns(|| match self.bind_listener(addr, transparency) {
            Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && is_no_ipv6(&e) => self
                .bind_listener(
                    SocketAddr::new(IpAddr::from([0, 0, 0, 0]), addr.port()),
                    transparency,
                ),
            other => other,
        })
    }

    fn bind_listener(
        &self,
        addr: SocketAddr,
        transparency: Transparency,
    ) -> io::Result<(std::net::TcpListener, bool)> {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        if self.reuse_port {
            s.set_reuse_port(true)?;
        }
        if let Some(mark) = self.mark {
            s.set_mark(mark)?;
        }
        // Accepted sockets inherit these from the listener (Linux copies the listener's
        // socket state into every child), which saves five syscalls per connection.
        s.set_tcp_nodelay(true)?;
        self.apply_keepalive(&SockRef::from(&s))?;
        if addr.is_ipv6() {
            s.set_only_v6(false)?;
        }
        let transparent = match transparency {
            Transparency::Off => false,
            Transparency::BestEffort => set_transparent(&s, addr).is_ok(),
            Transparency::Required => {
                set_transparent(&s, addr)?;
                true
            }
        };
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        Ok((s.into(), transparent))
    }

    /// A UDP socket bound to `addr` (port 0 for an ephemeral one), marked, with SO_REUSEPORT
    /// when listeners use it. Not yet registered with a runtime (`from_std` on the runtime
    /// that will serve it).
    pub fn udp_socket(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        self.in_ns(|| {
            let s = Socket::new(
                Domain::for_address(addr),
                Type::DGRAM.nonblocking(),
                Some(Protocol::UDP),
            )?;
            if addr.port() != 0 {
                s.set_reuse_address(true)?;
                if self.reuse_port {
                    s.set_reuse_port(true)?;
                }
            }
            if let Some(mark) = self.mark {
                s.set_mark(mark)?;
            }
            s.bind(&addr.into())?;
            Ok(s.into())
        })
    }

    /// Lets the kernel hand connections queued on a closing listener to another listener of
    /// the same SO_REUSEPORT group (`net.ipv4.tcp_migrate_req`), so a ztun handing a pod over
    /// to its successor during an upgrade never resets a connection. Best effort.
    pub fn enable_listener_migration(&self) {
        let res = self.in_ns(|| std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1"));
        if let Err(e) = res {
            tracing::debug!(error = %e, "cannot enable tcp_migrate_req; an upgrade may reset queued connections");
        }
    }

    /// Connects to `dst`. With `source`, the socket is transparent and bound to that IP, so the
    /// peer sees the original client address.
    pub async fn connect(&self, dst: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
        let sock = self.in_ns(|| {
            let s = Socket::new(
                Domain::for_address(dst),
                Type::STREAM.nonblocking(),
                Some(Protocol::TCP),
            )?;
            if let Some(mark) = self.mark {
                s.set_mark(mark)?;
            }
            s.set_tcp_nodelay(true)?;
            self.apply_keepalive(&SockRef::from(&s))?;
            if let Some(src) = source {
                // Transparent alone lets the socket bind a non-local address (no FREEBIND).
                if dst.is_ipv4() {
                    s.set_ip_transparent_v4(true)?;
                } else {
                    s.set_ip_transparent_v6(true)?;
                }
                // The port is chosen at connect time, unique per 4-tuple rather than per
                // source address: spoofed sources share one address among many connections.
                // (An IPPROTO_IP option that Linux honours on IPv6 sockets too.)
                let _ = nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                );
                s.bind(&SocketAddr::new(src, 0).into())?;
            }
            Ok(s)
        })?;
        let sock = TcpSocket::from_std_stream(sock.into());
        match tokio::time::timeout(self.connect_timeout, sock.connect(dst)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    fn apply_keepalive(&self, s: &SockRef<'_>) -> io::Result<()> {
        let k = &self.keepalive;
        if !k.enabled {
            return Ok(());
        }
        s.set_keepalive(true)?;
        let params = TcpKeepalive::new()
            .with_time(k.time)
            .with_interval(k.interval)
            .with_retries(k.retries);
        s.set_tcp_keepalive(&params)?;
        if k.user_timeout_enabled {
            s.set_tcp_user_timeout(Some(k.time + k.interval * k.retries))?;
        }
        Ok(())
    }
}

/// Whether a bind failed because the namespace has no IPv6 (or none on that interface).
pub fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// Sets `IP_TRANSPARENT` (and `IPV6_TRANSPARENT` on an IPv6 socket).
fn set_transparent(s: &Socket, addr: SocketAddr) -> io::Result<()> {
    s.set_ip_transparent_v4(true)?;
    if addr.is_ipv6() {
        s.set_ip_transparent_v6(true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without CAP_NET_ADMIN and CAP_NET_RAW (dropped for one thread) a best-effort listener
    /// comes up plain and says so, a required one fails; with them, both are transparent.
    #[test]
    fn transparency_without_the_capability() {
        let keepalive = Keepalive {
            enabled: false,
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 1,
            user_timeout_enabled: false,
        };
        let sockets = Sockets::new(None, None, false, keepalive, Duration::from_secs(5));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let transparent = |t| sockets.capture_listener(any, t).map(|(_, on)| on);
        assert!(transparent(Transparency::BestEffort).unwrap());
        assert!(transparent(Transparency::Required).unwrap());
        assert!(!transparent(Transparency::Off).unwrap());
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    use crate::sys::caps::{drop_effective, CAP_NET_ADMIN, CAP_NET_RAW};
                    drop_effective(&[CAP_NET_ADMIN, CAP_NET_RAW]).unwrap();
                    assert!(!transparent(Transparency::BestEffort).unwrap());
                    let err = transparent(Transparency::Required).unwrap_err();
                    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
                    assert!(!transparent(Transparency::Off).unwrap());
                })
                .join()
                .unwrap();
        });
    }

    /// The listener's options reach every accepted socket: ztun sets them once per listener.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener() {
        let keepalive = Keepalive {
            enabled: true,
            time: Duration::from_secs(42),
            interval: Duration::from_secs(7),
            retries: 3,
            user_timeout_enabled: true,
        };
        let sockets = Sockets::new(None, None, false, keepalive, Duration::from_secs(5));
        let listener = sockets
            .std_listener("127.0.0.1:0".parse().unwrap(), false)
            .unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let s = SockRef::from(&accepted);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(42 + 7 * 3))
        );
    }
}
