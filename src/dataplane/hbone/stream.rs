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

use std::future::poll_fn;
use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
pub async fn relay(
    tcp_read: OwnedReadHalf,
    tcp_write: OwnedWriteHalf,
    send: SendStream<Bytes>,
    recv: RecvStream,
    meter: &Meter,
    stall: Option<Duration>,
) -> io::Result<()> {
    let up = tcp_to_h2(tcp_read, send, meter, stall);
    let down = h2_to_tcp(recv, tcp_write, meter);
    tokio::try_join!(up, down).map(|_| ())
}

/// Like [`relay`], for a CONNECT whose response has not arrived: the client's bytes go out at
/// once, so the first request rides with the CONNECT instead of a round trip later (the peer
/// forwards nothing before it has authorized the tunnel and answered 200, and drops it all on
/// a refusal); the peer's bytes flow once `response` gives the stream. The response's error
/// (say a 401) is reported in preference to a send failure it caused.
pub async fn relay_early<E: From<io::Error>>(
    tcp_read: OwnedReadHalf,
    tcp_write: OwnedWriteHalf,
    send: SendStream<Bytes>,
    response: impl std::future::Future<Output = Result<RecvStream, E>>,
    meter: &Meter,
    stall: Option<Duration>,
) -> Result<(), E> {
    let answered = tokio::sync::Notify::new();
    let up = tcp_to_h2(tcp_read, send, meter, stall);
    let down = async {
        let recv = response.await?;
        answered.notify_one();
        h2_to_tcp(recv, tcp_write, meter).await.map_err(E::from)
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut down => match r {
                Err(e) => break Err(e),
                Ok(()) if up_done => break Ok(()),
                Ok(()) => break (&mut up).await.map_err(E::from),
            },
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(e) => {
                    // Until the answer is in, wait for it: a refusal explains this failure.
                    let failed = E::from(e);
                    break tokio::select! {
                        r = &mut down => Err(r.err().unwrap_or(failed)),
                        _ = answered.notified() => Err(failed),
                    };
                }
            },
        }
    }
}

/// Reads the socket into a buffer that exists only while data flows: an idle connection
/// holds no read buffer at all (it waits for readiness without one), a busy one reuses and
/// grows its buffer. A short read means the socket is drained (tokio then clears readiness,
/// so waiting costs no extra syscall), which is when the buffer is let go.
async fn tcp_to_h2(
    mut rd: OwnedReadHalf,
    mut send: SendStream<Bytes>,
    meter: &Meter,
    stall: Option<Duration>,
) -> io::Result<()> {
    let mut records = 1;
    let mut buf = BytesMut::new();
    loop {
        if buf.capacity() == 0 {
            rd.readable().await?;
        }
        let want = read_size(records);
        if buf.capacity() < want {
            buf.reserve(want);
        }
        let room = buf.capacity() - buf.len();
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(());
        }
        meter.from_pod(n as u64);
        super::fair::spend(n).await;
        let drained = n < room;
        if !drained && records < MAX_READ_RECORDS {
            // A full read means the flow is busy: read more per syscall next time.
            records *= 2;
        }
        send_all(&mut send, buf.split().freeze(), stall).await?;
        if drained {
            buf = BytesMut::new();
        }
    }
}

async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    stall: Option<Duration>,
) -> io::Result<()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = match capacity(send, stall).await? {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(h2_io(e)),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "stream closed by peer",
                ))
            }
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        send.send_data(chunk, false).map_err(h2_io)?;
    }
    Ok(())
}

async fn h2_to_tcp(mut recv: RecvStream, mut wr: OwnedWriteHalf, meter: &Meter) -> io::Result<()> {
    loop {
        match recv.data().await {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                wr.write_all(&chunk).await?;
                meter.to_pod(n as u64);
                super::fair::spend(n).await;
                recv.flow_control().release_capacity(n).map_err(h2_io)?;
            }
            Some(Err(e)) if is_graceful_reset(&e) => break,
            Some(Err(e)) => return Err(h2_io(e)),
            None => break,
        }
    }
    wr.shutdown().await
}

/// The send capacity h2 assigns: at once if the window is open, else within `stall`.
async fn capacity(
    send: &mut SendStream<Bytes>,
    stall: Option<Duration>,
) -> io::Result<Option<Result<usize, h2::Error>>> {
    if let Poll::Ready(cap) = poll_fn(|cx| Poll::Ready(send.poll_capacity(cx))).await {
        return Ok(cap);
    }
    let wait = poll_fn(|cx| send.poll_capacity(cx));
    match stall {
        None => Ok(wait.await),
        // Boxed: the timer is only needed while the window is closed, so it must not grow
        // the relay future every connection holds.
        Some(t) => Box::pin(tokio::time::timeout(t, wait))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, Stalled(t))),
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
}
