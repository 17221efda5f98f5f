//! Real TCP traffic in and out of namespaces: an echo server that honours half-close, a
//! server that tells each client the peer address it saw, and clients that move checksummed
//! bulk data with generous deadlines.
//!
//! The async functions work in whatever namespace the calling thread is in; the `Netns`
//! methods run them on a thread inside that namespace.
//!
//! Servers listen on `[::]` for both families (on `0.0.0.0` where the namespace has no IPv6)
//! and report IPv4 clients by their IPv4 address, never as `::ffff:a.b.c.d`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::netns::{Netns, NetnsTask};
use crate::testkit::rng::Xorshift;

/// Deadline of the synchronous client helpers on [`Netns`].
pub const TRAFFIC_DEADLINE: Duration = Duration::from_secs(60);
/// Connect timeout of [`Netns::try_connect`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

/// A server running on its own thread inside a namespace; stops, and has closed its listener,
/// once dropped or [`stop`](Server::stop)ped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    task: Option<NetnsTask<()>>,
}

impl Server {
    /// The bound address (`[::]:<port>`, or `0.0.0.0:<port>` in a namespace without IPv6;
    /// the port is the real one when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Peer addresses of all accepted connections so far, in accept order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().clone()
    }

    /// Stops the server and waits until its listener is closed (dropping it does the same).
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        // Synchronous, so that a test may bind the same port again right away.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What a bulk echo transfer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes sent, which is also the number of bytes received back and verified.
    pub bytes: u64,
    /// Wall time from connect to the echo's end.
    pub elapsed: Duration,
}

/// What kind of server [`Netns::spawn_server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    Echo,
    PeerRecorder,
}

impl Netns {
    /// Starts a TCP echo server on `[::]:port` (0 = any port; both families) in this namespace. Each
    /// connection gets back every byte it sends; after the client half-closes, the server
    /// finishes writing and then half-closes too.
    pub fn spawn_echo_server(&self, port: u16) -> anyhow::Result<Server> {
        self.spawn_server(port, ServerKind::Echo)
    }

    /// Starts a TCP server on `[::]:port` (0 = any port; both families) that records the peer
    /// address of each accepted connection, answers `"<ip>:<port>\n"` (`"[<ip>]:<port>\n"`
    /// for IPv6) and closes.
    pub fn spawn_peer_recorder(&self, port: u16) -> anyhow::Result<Server> {
        self.spawn_server(port, ServerKind::PeerRecorder)
    }

    /// From this namespace: sends `len` pseudo-random bytes to the echo server at `addr`,
    /// half-closes, and checks byte for byte that exactly the same stream comes back.
    pub fn bulk_echo(&self, addr: SocketAddr, len: u64) -> anyhow::Result<Transfer> {
        self.block_on(bulk_echo(addr, len, TRAFFIC_DEADLINE))
    }

    /// From this namespace: connects to a peer recorder at `addr` and returns the client
    /// address it reported.
    pub fn peer_seen_by(&self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        self.block_on(peer_seen_by(addr, TRAFFIC_DEADLINE))
    }

    /// From this namespace: opens (and closes) one TCP connection to `addr`, returning the
    /// raw connect error (e.g. `ConnectionRefused`) or `TimedOut` after
    /// [`CONNECT_TIMEOUT`].
    pub fn try_connect(&self, addr: SocketAddr) -> std::io::Result<()> {
        self.block_on(async move { connect(addr, CONNECT_TIMEOUT).await.map(drop) })
    }

    fn spawn_server(&self, port: u16, kind: ServerKind) -> anyhow::Result<Server> {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let task = self.spawn_async({
            let peers = peers.clone();
            async move {
                let listener = match bind_any(port) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr());
                serve(listener, kind, peers).await;
            }
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("server thread in {} did not start", self.name()))?
            .with_context(|| format!("bind [::]:{port} in {}", self.name()))?;
        Ok(Server {
            addr,
            peers,
            task: Some(task),
        })
    }
}

/// Connects to `addr` with a timeout, mapping the timeout to `io::ErrorKind::TimedOut`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {timeout:?}"),
        )),
    }
}

/// Connects to the echo server at `addr` and runs [`bulk_echo_over`] on the connection,
/// all within `deadline`.
pub async fn bulk_echo(addr: SocketAddr, len: u64, deadline: Duration) -> anyhow::Result<Transfer> {
    let started = Instant::now();
    let work = async {
        let stream = connect(addr, deadline)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        bulk_echo_over(stream, len).await
    };
    let bytes = tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| anyhow!("echo of {len} bytes via {addr} not done within {deadline:?}"))??;
    Ok(Transfer {
        bytes,
        elapsed: started.elapsed(),
    })
}

/// On an established connection to an echo server: writes `len` pseudo-random bytes,
/// half-closes, and reads until EOF while comparing every byte with what was sent. Writing
/// and reading run concurrently, so any `len` works. Returns the number of bytes verified.
pub async fn bulk_echo_over(mut stream: TcpStream, len: u64) -> anyhow::Result<u64> {
    let seed = len ^ 0x5eed_f0ec_4000;
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            pattern.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).await.context("write")?;
            left -= n as u64;
        }
        writer.shutdown().await.context("half-close")?;
        anyhow::Ok(())
    };
    let read = async {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut expected = vec![0u8; CHUNK];
        let mut seen = 0u64;
        loop {
            let n = reader.read(&mut buf).await.context("read echo")?;
            if n == 0 {
                break;
            }
            if seen + n as u64 > len {
                bail!("echo returned more than the {len} bytes sent");
            }
            pattern.fill(&mut expected[..n]);
            if let Some(i) = buf[..n]
                .iter()
                .zip(&expected[..n])
                .position(|(a, b)| a != b)
            {
                bail!(
                    "echo differs from what was sent at byte {}",
                    seen + i as u64
                );
            }
            seen += n as u64;
        }
        if seen != len {
            bail!("echo ended after {seen} of {len} bytes");
        }
        anyhow::Ok(seen)
    };
    let ((), seen) = tokio::try_join!(write, read)?;
    Ok(seen)
}

/// Connects to a peer recorder at `addr` and returns the client address it reported.
pub async fn peer_seen_by(addr: SocketAddr, deadline: Duration) -> anyhow::Result<SocketAddr> {
    let work = async {
        let stream = connect(addr, deadline)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .context("read peer line")?;
        line.trim_end()
            .parse::<SocketAddr>()
            .with_context(|| format!("parse peer line {line:?}"))
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| anyhow!("no peer line from {addr} within {deadline:?}"))?
}

/// An echo server on `[::]:port` (both families) in the calling thread's namespace, for a
/// process of its own (`ztun-lab echo-server`): prints `listening on ADDR` once bound, then
/// serves forever.
pub async fn echo_server(port: u16) -> anyhow::Result<()> {
    let listener = bind_any(port)?;
    println!("listening on {}", listener.local_addr()?);
    serve(listener, ServerKind::Echo, Arc::default()).await;
    Ok(())
}

/// A listener on `[::]:port` accepting both families, or on `0.0.0.0:port` when the
/// namespace has no IPv6. Must run inside a tokio runtime.
fn bind_any(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(false)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        TcpListener::from_std(s.into())
    };
    match bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
            ) =>
        {
            bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        }
        other => other,
    }
}

async fn serve(listener: TcpListener, kind: ServerKind, peers: Arc<Mutex<Vec<SocketAddr>>>) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            // Out of fds or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // An IPv4 client of the dual-stack listener arrives as ::ffff:a.b.c.d.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        peers.lock().push(peer);
        tokio::spawn(async move {
            match kind {
                ServerKind::Echo => {
                    let (mut reader, mut writer) = stream.split();
                    if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
                        let _ = writer.shutdown().await;
                    }
                }
                ServerKind::PeerRecorder => {
                    let _ = stream.write_all(format!("{peer}\n").as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            }
        });
    }
}

/// A deterministic pseudo-random byte stream ([`Xorshift`]), produced 8 bytes at a time so
/// that generating it is cheap even in unoptimised test builds.
struct Pattern {
    rng: Xorshift,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            rng: Xorshift::new(seed | 1),
            word: [0; 8],
            used: 8,
        }
    }

    /// Writes the next `out.len()` bytes of the stream into `out`.
    fn fill(&mut self, out: &mut [u8]) {
        let mut at = 0;
        while at < out.len() {
            if self.used == 8 {
                self.word = self.rng.next_u64().to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(out.len() - at);
            out[at..at + n].copy_from_slice(&self.word[self.used..self.used + n]);
            self.used += n;
            at += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_does_not_depend_on_chunking() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut p = Pattern::new(7);
        for range in [0..3, 3..11, 11..500, 500..1000] {
            p.fill(&mut pieces[range]);
        }
        assert_eq!(whole, pieces);
        assert_ne!(&whole[..8], &whole[8..16]);
    }

    #[tokio::test]
    async fn echo_server_round_trips_on_loopback() {
        let netns_less = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = netns_less.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(serve(netns_less, ServerKind::Echo, peers.clone()));
        let moved = bulk_echo(addr, 3 * CHUNK as u64 + 5, TRAFFIC_DEADLINE)
            .await
            .unwrap();
        assert_eq!(moved.bytes, 3 * CHUNK as u64 + 5);
        assert_eq!(peers.lock().len(), 1);
    }
}
