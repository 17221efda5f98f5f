//! The floor of the connection and round-trip figures for a tunnel shaped like ztun's: a pair
//! of relays that carry every client connection as a stream over one persistent TCP link
//! between them, as HBONE carries them over one pooled connection between the nodes, with
//! nothing of a tunnel's own work (no TLS, no HTTP/2, no flow control, no policy, no logs).
//!
//! `relay --mux` (the near end) accepts clients and opens a stream per connection on its link
//! to `relay --demux` (the far end), which connects to its target per stream. Each end is one
//! thread's event loop (a current-thread runtime), as a tunnel with one worker, and moves
//! bytes with no hop between tasks: the task that reads a client's socket writes the frame to
//! the link itself, and the task that reads the link writes each payload to its socket itself.
//! A socket that cannot take the bytes at once gets them from a task spawned for as long as it
//! lags. So per hop and per connection this pays the syscalls and the TCP work any such tunnel
//! must pay, and no more.
//!
//! Frames on the link: stream id (u32), kind (u8: open, data, end), payload length (u32),
//! payload. An end half-closes the stream's socket once everything before it was written.
//!
//! For what-if runs, each end can be given `work` to spend per new stream (on-CPU, in user
//! space, before the stream opens): how a tunnel's connection rate on this machine moves with
//! the user-space time its two ends spend per connection, everything else held equal.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

const OPEN: u8 = 0;
const DATA: u8 = 1;
const END: u8 = 2;
/// A frame's head: stream id, kind, payload length.
const HEAD: usize = 9;
/// Largest read from a client's socket (one frame's payload).
const CHUNK: usize = 64 * 1024;

/// The near end: relays every connection accepted on `listen` as a stream over one link to
/// the far end at `to`, spending `work` per stream, until killed.
pub fn relay_mux(listen: SocketAddr, to: SocketAddr, work: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    near(listener, to, work, || {
        println!("relaying {listen} -> {to} (mux)")
    })
}

/// The far end: accepts links on `listen` and connects to `to` for every stream they open,
/// spending `work` per stream, until killed.
pub fn relay_demux(listen: SocketAddr, to: SocketAddr, work: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("relaying {listen} -> {to} (demux)");
    far(listener, to, work)
}

/// Keeps the thread busy in user space for `work` (nothing when zero).
fn spend(work: Duration) {
    if work.is_zero() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < work {
        std::hint::spin_loop();
    }
}

fn event_loop(run: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, run)
}

fn near(
    listener: TcpListener,
    to: SocketAddr,
    work: Duration,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    event_loop(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let sock = TcpStream::connect(to)
            .await
            .with_context(|| format!("link to {to}"))?;
        sock.set_nodelay(true)?;
        let link = Link::new(sock, work);
        ready();
        let mut lost = tokio::task::spawn_local(read_link(link.clone(), None));
        let mut next = 0u32;
        loop {
            let (client, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                // Nothing could be relayed any more.
                _ = &mut lost => anyhow::bail!("the link to the far end {to} is gone"),
            };
            let _ = client.set_nodelay(true);
            spend(link.work);
            let client = Rc::new(client);
            next = next.wrapping_add(1);
            link.streams
                .borrow_mut()
                .insert(next, Outlet::new(Some(client.clone())));
            link.out.write(&head(next, OPEN, 0));
            tokio::task::spawn_local(to_link(next, client, link.clone()));
        }
    })
}

fn far(listener: TcpListener, to: SocketAddr, work: Duration) -> anyhow::Result<()> {
    event_loop(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (sock, _) = listener.accept().await?;
            sock.set_nodelay(true)?;
            tokio::task::spawn_local(read_link(Link::new(sock, work), Some(to)));
        }
    })
}

/// One link and the streams it carries.
struct Link {
    sock: Rc<TcpStream>,
    out: Rc<Outlet>,
    /// Open streams by id: where their payloads go.
    streams: RefCell<HashMap<u32, Rc<Outlet>>>,
    /// One read buffer for every stream of the link: a read is framed and written (or queued)
    /// before the next one starts.
    scratch: RefCell<Vec<u8>>,
    /// Spent per new stream (see the module's notes).
    work: Duration,
}

impl Link {
    fn new(sock: TcpStream, work: Duration) -> Rc<Link> {
        let sock = Rc::new(sock);
        Rc::new(Link {
            out: Outlet::new(Some(sock.clone())),
            sock,
            streams: RefCell::new(HashMap::new()),
            scratch: RefCell::new(vec![0; HEAD + CHUNK]),
            work,
        })
    }
}

fn head(id: u32, kind: u8, len: usize) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[..4].copy_from_slice(&id.to_be_bytes());
    h[4] = kind;
    h[5..].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Reads a stream's socket into DATA frames on the link until EOF, then sends its END.
async fn to_link(id: u32, sock: Rc<TcpStream>, link: Rc<Link>) {
    loop {
        if sock.readable().await.is_err() {
            break;
        }
        let mut buf = link.scratch.borrow_mut();
        match sock.try_read(&mut buf[HEAD..]) {
            Ok(0) => break,
            Ok(n) => {
                buf[..HEAD].copy_from_slice(&head(id, DATA, n));
                link.out.write(&buf[..HEAD + n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
    link.out.write(&head(id, END, 0));
}

/// Reads the link's frames and hands each payload to its stream's socket, until the link
/// ends. On the far end (`target` given) an OPEN connects a stream to the target.
async fn read_link(link: Rc<Link>, target: Option<SocketAddr>) {
    let mut buf = BytesMut::with_capacity(4 * CHUNK);
    loop {
        if link.sock.readable().await.is_err() {
            break;
        }
        match link.sock.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        while buf.len() >= HEAD {
            let id = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let kind = buf[4];
            let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
            if buf.len() < HEAD + len {
                buf.reserve(HEAD + len);
                break;
            }
            let payload = &buf[HEAD..HEAD + len];
            match kind {
                OPEN => {
                    if let Some(to) = target {
                        spend(link.work);
                        let out = Outlet::new(None);
                        link.streams.borrow_mut().insert(id, out.clone());
                        tokio::task::spawn_local(connect_stream(id, to, out, link.clone()));
                    }
                }
                DATA => {
                    let out = link.streams.borrow().get(&id).cloned();
                    if let Some(out) = out {
                        out.write(payload);
                    }
                }
                _ => {
                    let out = link.streams.borrow_mut().remove(&id);
                    if let Some(out) = out {
                        out.finish();
                    }
                }
            }
            buf.advance(HEAD + len);
        }
    }
}

/// The far end of a stream: connects to the target, hands the socket to the stream's outlet
/// (which writes what arrived meanwhile), and reads it onto the link. A failed connect ends
/// the stream.
async fn connect_stream(id: u32, to: SocketAddr, out: Rc<Outlet>, link: Rc<Link>) {
    let Ok(sock) = TcpStream::connect(to).await else {
        link.streams.borrow_mut().remove(&id);
        link.out.write(&head(id, END, 0));
        return;
    };
    let _ = sock.set_nodelay(true);
    let sock = Rc::new(sock);
    out.attach(sock.clone());
    to_link(id, sock, link).await;
}

/// Where one socket's incoming bytes go: written at once when the socket takes them, queued
/// for a flushing task when it does not (or before the far end's socket is connected).
struct Outlet {
    sock: RefCell<Option<Rc<TcpStream>>>,
    queued: RefCell<BytesMut>,
    /// Half-close the socket once the queue is written.
    fin: Cell<bool>,
    /// A flushing task is running.
    flushing: Cell<bool>,
    /// The write side is finished: shut down, or failed.
    closed: Cell<bool>,
}

impl Outlet {
    fn new(sock: Option<Rc<TcpStream>>) -> Rc<Outlet> {
        Rc::new(Outlet {
            sock: RefCell::new(sock),
            queued: RefCell::new(BytesMut::new()),
            fin: Cell::new(false),
            flushing: Cell::new(false),
            closed: Cell::new(false),
        })
    }

    fn write(self: &Rc<Self>, bytes: &[u8]) {
        if self.closed.get() || self.fin.get() {
            return;
        }
        let mut written = 0;
        if self.queued.borrow().is_empty() {
            if let Some(sock) = self.sock.borrow().as_ref() {
                match sock.try_write(bytes) {
                    Ok(n) => written = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.closed.set(true);
                        return;
                    }
                }
            }
        }
        if written < bytes.len() {
            self.queued
                .borrow_mut()
                .extend_from_slice(&bytes[written..]);
            self.flush_later();
        }
    }

    /// Half-closes the socket once everything queued is written.
    fn finish(self: &Rc<Self>) {
        self.fin.set(true);
        if self.queued.borrow().is_empty() && !self.flushing.get() {
            self.shut();
        } else {
            self.flush_later();
        }
    }

    /// The far end's socket is connected: write what waited for it.
    fn attach(self: &Rc<Self>, sock: Rc<TcpStream>) {
        *self.sock.borrow_mut() = Some(sock);
        if !self.queued.borrow().is_empty() {
            self.flush_later();
        } else if self.fin.get() {
            self.shut();
        }
    }

    fn shut(&self) {
        if self.closed.replace(true) {
            return;
        }
        if let Some(sock) = self.sock.borrow().as_ref() {
            let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        }
    }

    fn flush_later(self: &Rc<Self>) {
        if self.sock.borrow().is_none() || self.flushing.replace(true) {
            return;
        }
        tokio::task::spawn_local(flush(self.clone()));
    }
}

/// Writes an outlet's queue as its socket takes it, then half-closes it if asked to.
async fn flush(out: Rc<Outlet>) {
    let Some(sock) = out.sock.borrow().clone() else {
        return;
    };
    while !out.closed.get() && !out.queued.borrow().is_empty() {
        if sock.writable().await.is_err() {
            out.closed.set(true);
            break;
        }
        let r = sock.try_write(&out.queued.borrow());
        match r {
            Ok(n) => out.queued.borrow_mut().advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => out.closed.set(true),
        }
    }
    out.queued.borrow_mut().clear();
    out.flushing.set(false);
    if out.fin.get() {
        out.shut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream as StdStream};
    use std::time::Duration;

    /// A far end on loopback relaying to `to`, serving until the test process ends.
    fn far_end(to: SocketAddr) -> SocketAddr {
        far_end_spending(to, Duration::ZERO)
    }

    fn far_end_spending(to: SocketAddr, work: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || far(listener, to, work));
        addr
    }

    /// A near end on loopback to `far`, serving until the test process ends; returns once
    /// its link is up.
    fn near_end(far: SocketAddr) -> SocketAddr {
        near_end_spending(far, Duration::ZERO)
    }

    fn near_end_spending(far: SocketAddr, work: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || near(listener, far, work, move || tx.send(()).unwrap()));
        rx.recv_timeout(Duration::from_secs(60)).expect("link up");
        addr
    }

    /// An echo server on loopback: echoes each connection until its client half-closes,
    /// then half-closes too.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    std::io::copy(&mut s, &mut w).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
            }
        });
        addr
    }

    fn client(to: SocketAddr) -> StdStream {
        let s = StdStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }

    /// A stream larger than every socket buffer on the way comes back byte for byte through
    /// the pair, and the half-close crosses both ways. The client reads nothing until it has
    /// written everything, so its socket pushes back and the near end must queue.
    #[test]
    fn a_large_stream_and_its_half_close_cross_the_pair_both_ways() {
        let near = near_end(far_end(echo()));
        let mut c = client(near);
        let sent: Vec<u8> = (0..24_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = c.try_clone().unwrap();
        let payload = sent.clone();
        std::thread::spawn(move || {
            w.write_all(&payload).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
        .join()
        .unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), sent.len());
        assert!(
            back == sent,
            "the relayed stream differs from what was sent"
        );
    }

    /// Many connections at once over the one link each get their own bytes back, and each
    /// sees its own end.
    #[test]
    fn concurrent_connections_share_the_link_and_stay_apart() {
        let near = near_end(far_end(echo()));
        let clients: Vec<_> = (0..32u8)
            .map(|k| {
                std::thread::spawn(move || {
                    for round in 0..20u8 {
                        let mut c = client(near);
                        let msg = [k, round, k ^ round, 0x5a];
                        c.write_all(&msg).unwrap();
                        c.shutdown(Shutdown::Write).unwrap();
                        let mut back = Vec::new();
                        c.read_to_end(&mut back).unwrap();
                        assert_eq!(back, msg, "connection {k}, round {round}");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    }

    /// A target that refuses ends the stream: the client reads EOF instead of hanging.
    #[test]
    fn a_refused_target_ends_the_stream() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let near = near_end(far_end(gone));
        let mut c = client(near);
        c.write_all(b"hello").unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
    }

    /// Each end spends its work on every new stream before the stream's bytes move on: a
    /// connection's first round trip cannot come back sooner than both ends' work together.
    /// (A lower bound only, which no load can break.)
    #[test]
    fn each_end_spends_its_work_on_every_new_stream() {
        let work = Duration::from_millis(25);
        let near = near_end_spending(far_end_spending(echo(), work), work);
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let mut c = client(near);
            c.write_all(b"ping").unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"ping");
            let took = started.elapsed();
            assert!(
                took >= 2 * work,
                "round trip in {took:?}, work {work:?} per end"
            );
        }
    }
}
