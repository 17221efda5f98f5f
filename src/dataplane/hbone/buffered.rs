//! A read buffer that exists only while it holds bytes: [`Buffered`], under TLS on every
//! HBONE socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Reads `inner` through a buffer of `capacity` bytes, as `tokio::io::BufReader` does, but
/// allocates the buffer for a read and frees it once its bytes are consumed or the read is
/// pending: an idle HBONE connection (pooled, its streams idle) holds no read buffer. A
/// caller asking for at least `capacity` bytes reads directly. Writes pass through.
#[derive(Debug)]
pub struct Buffered<T> {
    inner: T,
    capacity: usize,
    /// Invariant: `Some` only while it holds unread bytes (`pos < buf.len()`).
    buf: Option<BytesMut>,
    pos: usize,
}

impl<T> Buffered<T> {
    /// `inner` behind a read buffer of `capacity` bytes.
    pub fn new(capacity: usize, inner: T) -> Self {
        Buffered {
            inner,
            capacity,
            buf: None,
            pos: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether a read buffer is allocated now.
    pub fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }

    /// Copies unread buffered bytes into `out`; frees the buffer once they are all consumed.
    fn drain_into(&mut self, out: &mut ReadBuf<'_>) {
        if let Some(buf) = &self.buf {
            let n = (buf.len() - self.pos).min(out.remaining());
            out.put_slice(&buf[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == buf.len() {
                self.buf = None;
                self.pos = 0;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Buffered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_some() {
            this.drain_into(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= this.capacity {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        // Not zeroed: the read fills it, and only what it filled counts.
        let mut buf = BytesMut::with_capacity(this.capacity);
        let read = this.inner.read_buf(&mut buf);
        // Pending or failed: `buf` is dropped, nothing is held while waiting.
        let n = ready!(std::pin::pin!(read).poll(cx))?;
        if n > 0 {
            this.buf = Some(buf);
            this.pos = 0;
            this.drain_into(out);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads go through the buffer (bytes intact, in order, across reads smaller than what
    /// arrived); the buffer is freed as soon as its bytes are consumed, and a read that has
    /// to wait holds none.
    #[tokio::test]
    async fn the_buffer_lives_only_while_it_holds_bytes() {
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let mut io = Buffered::new(1024, io);
        let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.expect("write");
        let mut got = vec![0u8; 100];
        io.read_exact(&mut got).await.expect("read");
        assert!(io.holds_buffer(), "a partly consumed read keeps its bytes");
        let mut rest = vec![0u8; sent.len() - 100];
        io.read_exact(&mut rest).await.expect("read");
        got.extend_from_slice(&rest);
        assert_eq!(got, sent);
        assert!(!io.holds_buffer(), "a consumed buffer is freed");
        // Nothing to read: the read waits without a buffer.
        let mut one = [0u8; 1];
        let mut pending = Box::pin(io.read(&mut one));
        std::future::poll_fn(|cx| {
            assert!(pending.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        drop(pending);
        assert!(!io.holds_buffer(), "a waiting read holds a buffer");
        peer.write_all(b"x").await.expect("write");
        assert_eq!(io.read(&mut one).await.expect("read"), 1);
        assert_eq!(one, *b"x");
        assert!(!io.holds_buffer());
    }
}
