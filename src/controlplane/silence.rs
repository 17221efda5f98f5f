//! A client connection that has sent nothing for too long is closed.
//!
//! The control plane pings its clients (HTTP/2 PING, [`super::KEEPALIVE`]) so that an idle
//! client sends at least the answer. Whether a client lives is then judged, as grpc-go's
//! keepalive judges it for istiod, by whether *anything* arrives from it: a client busy
//! receiving a large push sends only WINDOW_UPDATEs, and its answer to a PING waits behind
//! the data already in flight to it, which can take longer than the PING's timeout on a
//! loaded node. hyper's own keepalive counts neither WINDOW_UPDATEs nor late answers, so it
//! dropped such clients mid-push; here any byte read keeps the connection.
//!
//! The check runs whenever the connection has to wait, reading or writing: a client that has
//! stopped reading and writing (a stopped or lost node) fills the socket and leaves the
//! connection waiting to write, and is closed the same way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `IO` that fails with `TimedOut` once nothing has been read from it for `limit`.
pub struct Silence<IO> {
    inner: IO,
    limit: Duration,
    /// When the last byte arrived (or the connection was accepted).
    heard: Instant,
    /// Fires at `heard + limit` as of when it was last set; moved on lazily, so a read costs
    /// one clock read and no timer update.
    timer: Pin<Box<Sleep>>,
}

impl<IO> Silence<IO> {
    /// Wraps `inner`, judging it silent after `limit` without a byte read.
    pub fn new(inner: IO, limit: Duration) -> Self {
        let heard = Instant::now();
        Silence {
            inner,
            limit,
            heard,
            timer: Box::pin(tokio::time::sleep_until(heard + limit)),
        }
    }

    /// Called when the connection has to wait: the error once the client has been silent for
    /// `limit`, else the timer armed for when it would be.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.heard + self.limit;
            if due <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing received from the client for {:?}", self.limit),
                ));
            }
            self.timer.as_mut().reset(due);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Silence<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.heard = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Silence<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.check(cx).map(Err),
            done => done,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.check(cx).map(Err),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(40);

    /// A client that sends a byte now and then, never more than `LIMIT` apart, is kept for
    /// many times `LIMIT`; once it stops, the read fails `LIMIT` after its last byte.
    #[tokio::test(start_paused = true)]
    async fn a_client_is_kept_while_bytes_arrive_and_let_go_once_they_stop() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = Silence::new(server, LIMIT);
        let mut client = client;
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(LIMIT * 3 / 4).await;
                client.write_all(b"x").await.unwrap();
            }
            // Silent from here on, the connection still open.
            std::future::pending::<()>().await;
            drop(client);
        });
        let mut byte = [0u8; 1];
        for _ in 0..10 {
            server.read_exact(&mut byte).await.unwrap();
        }
        let last = Instant::now();
        assert_eq!(last - start, LIMIT * 3 / 4 * 10);
        let err = server.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - last, LIMIT);
    }

    /// A client that neither reads nor writes leaves the server waiting to write once the
    /// pipe is full; that wait fails `LIMIT` after the client's last byte too.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_stopped_reading_fails_the_blocked_write() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Silence::new(server, LIMIT);
        let start = Instant::now();
        let err = server.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, LIMIT);
        drop(client);
    }

    /// While a client's bytes keep arriving, a write it is slow to take waits as long as it
    /// takes: only silence fails it.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_talking_is_not_cut_off() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Silence::new(server, LIMIT);
        let (mut client_rd, mut client_wr) = tokio::io::split(client);
        let (server_rd, mut server_wr) = tokio::io::split(&mut server);
        // The client takes 64 bytes every LIMIT/2 and says a byte each time (a
        // WINDOW_UPDATE's worth), so 4 KiB takes 32 LIMITs.
        let client = async move {
            let mut got = 0;
            let mut chunk = [0u8; 64];
            while got < 4096 {
                tokio::time::sleep(LIMIT / 2).await;
                got += client_rd.read(&mut chunk).await.unwrap();
                client_wr.write_all(b"w").await.unwrap();
            }
            got
        };
        // The server reads what the client says, as an HTTP/2 connection does, until the
        // client hangs up.
        let listen = async move {
            let mut server_rd = server_rd;
            let mut sink = [0u8; 16];
            while server_rd.read(&mut sink).await.unwrap() > 0 {}
        };
        let write = async move {
            server_wr.write_all(&[0u8; 4096]).await.unwrap();
        };
        let (got, (), ()) = tokio::join!(client, write, listen);
        assert_eq!(got, 4096);
    }
}
