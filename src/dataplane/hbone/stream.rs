//! Moving bytes between a TCP socket and one HTTP/2 stream.
//!
//! TCP → HTTP/2: read into a buffer that exists only while data flows, hand the filled part
//! to h2 as a `Bytes` (no copy), wait for flow-control capacity. HTTP/2 → TCP: write each received `Bytes` chunk
//! straight to the socket and only then release its window, so a slow reader pushes back on
//! the sender. EOF on either side becomes a half-close on the other (END_STREAM / FIN); a
//! reset with NO_ERROR or CANCEL counts as EOF.
//!
//! A stream with bytes to send whose peer grants no window for the stall timeout fails with
//! [`Stalled`] (hardening H11): the stream is reset and the TCP side closed. The timer exists
//! only while the window is closed; an open window costs no timer at all.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::ops::access::Meter;

/// Plaintext carried by one full TLS record: rustls cuts every write into records of this
/// size, and sends what is left over as a smaller record.
const TLS_RECORD: usize = 16 * 1024;
/// An HTTP/2 frame's head, written before its payload.
const FRAME_HEAD: usize = 9;
/// Largest read, in TLS records (256 KiB); a busy flow's reads double up to it from one.
const MAX_READ_RECORDS: usize = 16;

/// How much to read for a DATA frame spanning `records` TLS records: with the frame's head
/// the frame fills them exactly, so no frame ends in a small extra record (which the peer
/// would open, check and copy like a full one).
const fn read_size(records: usize) -> usize {
    records * TLS_RECORD - FRAME_HEAD
}

/// The peer granted no flow-control window to a stream with bytes to send for this long.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stream stalled: the peer granted no flow-control window for {0:?}")]
pub struct Stalled(pub Duration);

/// Relays until both directions are finished, counting bytes into `meter`. A send window
/// closed for `stall` fails the relay with [`Stalled`] (`None`: wait forever).
///
/// The returned future is the two halves and nothing else: a plain function returning a
/// [`poll_fn`] that owns them, not an `async fn`, whose future would also keep a slot for each
/// argument next to the halves built from it for as long as the relay runs.
pub fn relay(
    tcp_read: OwnedReadHalf,
    tcp_write: OwnedWriteHalf,
    send: SendStream<Bytes>,
    recv: RecvStream,
    meter: Meter,
    stall: Option<Duration>,
) -> impl Future<Output = io::Result<()>> + Send + Unpin {
    // Each half is dropped as it finishes, as `try_join!` would.
    let mut up = Some(Up::new(tcp_read, send, stall));
    let mut down = Some(Down::new(recv, tcp_write));
    poll_fn(move |cx| {
        if let Some(u) = up.as_mut() {
            if let Poll::Ready(r) = u.poll(cx, &meter) {
                up = None;
                r?;
            }
        }
        if let Some(d) = down.as_mut() {
            if let Poll::Ready(r) = d.poll(cx, &meter) {
                down = None;
                r?;
            }
        }
        if up.is_none() && down.is_none() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
}

/// Like [`relay`], for a CONNECT whose response has not arrived: the client's bytes go out at
/// once, so the first request rides with the CONNECT instead of a round trip later (the peer
/// forwards nothing before it has authorized the tunnel and answered 200, and drops it all on
/// a refusal); the peer's bytes flow once `response` gives the stream. The response's error
/// (say a 401) is reported in preference to a send failure it caused. Like [`relay`]'s, the
/// returned future holds the relay's state only, not a copy of the arguments besides.
pub fn relay_early<'a, E: From<io::Error>>(
    tcp_read: OwnedReadHalf,
    tcp_write: OwnedWriteHalf,
    send: SendStream<Bytes>,
    response: impl Future<Output = Result<RecvStream, E>> + Send + 'a,
    meter: Meter,
    stall: Option<Duration>,
) -> impl Future<Output = Result<(), E>> + Send + Unpin + 'a {
    let mut up = Some(Up::new(tcp_read, send, stall));
    // Boxed and dropped once answered: an open tunnel does not keep the response's future.
    let mut response = Some(Box::pin(response));
    let mut tcp_write = Some(tcp_write);
    let mut down: Option<Down> = None;
    let mut down_done = false;
    // The client side failed before the answer was in: the answer may explain it.
    let mut up_failed: Option<io::Error> = None;
    poll_fn(move |cx| {
        if let Some(r) = response.as_mut() {
            if let Poll::Ready(answer) = r.as_mut().poll(cx) {
                response = None;
                let recv = answer?;
                if let Some(wr) = tcp_write.take() {
                    down = Some(Down::new(recv, wr));
                }
            }
        }
        let answered = response.is_none();
        if let Some(e) = up_failed.take() {
            if answered {
                return Poll::Ready(Err(E::from(e)));
            }
            up_failed = Some(e);
            return Poll::Pending;
        }
        if let Some(u) = up.as_mut() {
            if let Poll::Ready(r) = u.poll(cx, &meter) {
                up = None;
                if let Err(e) = r {
                    if answered {
                        return Poll::Ready(Err(E::from(e)));
                    }
                    // The response was polled above: its answer wakes this task.
                    up_failed = Some(e);
                    return Poll::Pending;
                }
            }
        }
        if let Some(d) = down.as_mut() {
            if let Poll::Ready(r) = d.poll(cx, &meter) {
                down = None;
                down_done = true;
                r.map_err(E::from)?;
            }
        }
        if up.is_none() && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
}

/// TCP → HTTP/2, polled by the relay. Reads the socket into a buffer that exists only while
/// data flows: an idle connection holds no read buffer at all (it waits for readiness without
/// one), a busy one reuses and grows its buffer. A short read means the socket is drained
/// (tokio then clears readiness, so waiting costs no extra syscall), which is when the buffer
/// is let go. Written as a plain state machine rather than an async function so that an idle
/// tunnel holds these fields and nothing else (no awaited sub-futures' state).
struct Up {
    rd: OwnedReadHalf,
    send: SendStream<Bytes>,
    buf: BytesMut,
    /// Size of the next read, in TLS records (see [`read_size`]).
    records: usize,
    /// Read and not yet handed to h2 (waiting for flow-control capacity).
    pending: Bytes,
    stall: Option<Duration>,
    /// Runs only while `pending` waits for a closed window.
    stall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Up {
    fn new(rd: OwnedReadHalf, send: SendStream<Bytes>, stall: Option<Duration>) -> Self {
        Up {
            rd,
            send,
            buf: BytesMut::new(),
            records: 1,
            pending: Bytes::new(),
            stall,
            stall_timer: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, meter: &Meter) -> Poll<io::Result<()>> {
        loop {
            while !self.pending.is_empty() {
                self.send.reserve_capacity(self.pending.len());
                match self.send.poll_capacity(cx) {
                    // h2 answers Pending rather than zero capacity; were it ever zero, the
                    // next poll registers the wakeup and is Pending, so this cannot spin.
                    Poll::Ready(Some(Ok(0))) => continue,
                    Poll::Ready(Some(Ok(cap))) => {
                        self.stall_timer = None;
                        let chunk = self.pending.split_to(cap.min(self.pending.len()));
                        self.send.send_data(chunk, false).map_err(h2_io)?;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_io(e))),
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "stream closed by peer",
                        )))
                    }
                    Poll::Pending => {
                        if let Some(t) = self.stall {
                            // Boxed: the timer is only needed while the window is closed,
                            // so it must not grow the state every connection holds.
                            let timer = self
                                .stall_timer
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                            if timer.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    Stalled(t),
                                )));
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.buf.capacity() == 0 {
                ready!(self.rd.as_ref().poll_read_ready(cx))?;
            }
            let want = read_size(self.records);
            if self.buf.capacity() < want {
                self.buf.reserve(want);
            }
            let room = self.buf.capacity() - self.buf.len();
            let n = {
                let read = self.rd.read_buf(&mut self.buf);
                ready!(std::pin::pin!(read).poll(cx))?
            };
            if n == 0 {
                self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
                return Poll::Ready(Ok(()));
            }
            meter.from_pod(n as u64);
            super::fair::charge(cx, n);
            let drained = n < room;
            if !drained && self.records < MAX_READ_RECORDS {
                // A full read means the flow is busy: read more per syscall next time.
                self.records *= 2;
            }
            self.pending = self.buf.split().freeze();
            if drained {
                self.buf = BytesMut::new();
            }
        }
    }
}

/// HTTP/2 → TCP, polled by the relay: writes each received chunk straight to the socket and
/// releases its window once written, so a slow reader pushes back on the sender; then
/// half-closes the socket.
struct Down {
    recv: RecvStream,
    wr: OwnedWriteHalf,
    /// Received and not yet written.
    chunk: Bytes,
    /// The stream ended: shut the socket's write side down.
    ended: bool,
}

impl Down {
    fn new(recv: RecvStream, wr: OwnedWriteHalf) -> Self {
        Down {
            recv,
            wr,
            chunk: Bytes::new(),
            ended: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, meter: &Meter) -> Poll<io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = ready!(Pin::new(&mut self.wr).poll_write(cx, &self.chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.chunk.advance(n);
                meter.to_pod(n as u64);
                super::fair::charge(cx, n);
                self.recv
                    .flow_control()
                    .release_capacity(n)
                    .map_err(h2_io)?;
                continue;
            }
            if self.ended {
                return Pin::new(&mut self.wr).poll_shutdown(cx);
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) if is_graceful_reset(&e) => self.ended = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => self.ended = true,
            }
        }
    }
}

/// A reset that means "done", not "failed" (NO_ERROR or CANCEL).
pub(super) fn is_graceful_reset(e: &h2::Error) -> bool {
    e.reason()
        .is_some_and(|r| r == h2::Reason::NO_ERROR || r == h2::Reason::CANCEL)
}

/// Converts an h2 error into an I/O error, keeping I/O errors as they are.
pub fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read size, sent as one DATA frame, fills whole TLS records with the frame's
    /// head, from the first read to the largest.
    #[test]
    fn a_chunk_and_its_frame_head_fill_whole_tls_records() {
        let mut records = 1;
        while records <= MAX_READ_RECORDS {
            let frame = read_size(records) + FRAME_HEAD;
            assert_eq!(
                frame % TLS_RECORD,
                0,
                "{records} records: frame of {frame} B"
            );
            assert_eq!(frame / TLS_RECORD, records);
            records *= 2;
        }
        assert_eq!(read_size(MAX_READ_RECORDS), 256 * 1024 - 9);
    }

    /// An idle tunnel's relay holds its two halves' fields, its meter and nothing else: no
    /// awaited sub-futures (readiness and capacity waits, writes) and no second copy of the
    /// arguments the halves were built from, both kept in every connection's task otherwise.
    #[test]
    fn an_idle_relay_holds_its_halves_and_nothing_else() {
        fn future_size<A, B, C, D, E, G, F: Future>(_: impl Fn(A, B, C, D, E, G) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let halves = std::mem::size_of::<Up>() + std::mem::size_of::<Down>();
        let meter = std::mem::size_of::<Meter>();
        let relay = future_size(relay);
        assert!(
            relay <= halves + meter,
            "relay future {relay} B, its halves {halves} B and meter {meter} B"
        );
        // The early relay also keeps the write half and the boxed response until answered,
        // and the client side's error while the answer is pending.
        let early = future_size(
            |a, b, c, d: std::future::Ready<io::Result<RecvStream>>, e, g| {
                relay_early(a, b, c, d, e, g)
            },
        );
        let waiting = std::mem::size_of::<OwnedWriteHalf>()
            + std::mem::size_of::<Box<()>>()
            + std::mem::size_of::<io::Error>()
            + 8;
        assert!(
            early <= halves + meter + waiting,
            "early relay future {early} B, its halves {halves} B, meter {meter} B and \
             {waiting} B of answer-pending state"
        );
    }
}
