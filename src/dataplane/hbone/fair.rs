//! Fairness between tunnels on a worker thread.
//!
//! tokio bounds what one task does per poll by counting operations (128 per poll), not bytes:
//! with 32–256 KiB per read, one bulk tunnel could encrypt, decrypt or copy several MiB before
//! the worker looks at anything else, and every other tenant on that thread waits that long.
//! Here I/O is charged by the byte instead — one unit of the task's budget per
//! [`BYTES_PER_UNIT`] — so a busy task yields after about 256 KiB and a small request
//! arriving meanwhile waits for a few such slices at most.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::coop;

/// Bytes moved per unit of tokio's per-poll task budget (128 units): 256 KiB per poll.
pub const BYTES_PER_UNIT: usize = 2048;

/// Charges `bytes` of I/O just done to the current task's budget (beyond the unit the I/O
/// itself cost). Stops early when the budget runs out: the task's next budgeted operation
/// then yields.
pub(super) fn charge(cx: &mut Context<'_>, bytes: usize) {
    for _ in 0..bytes / BYTES_PER_UNIT {
        match coop::poll_proceed(cx) {
            Poll::Ready(progress) => progress.made_progress(),
            Poll::Pending => break,
        }
    }
}

/// An I/O object whose reads and writes are charged by the byte.
#[derive(Debug)]
pub struct Metered<T>(pub T);

impl<T> Metered<T> {
    /// The wrapped object.
    pub fn get_ref(&self) -> &T {
        &self.0
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
        charge(cx, buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.0).poll_write(cx, data))?;
        charge(cx, n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.0).poll_write_vectored(cx, bufs))?;
        charge(cx, n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
