//! Log lines leave a data worker in batches: one `write` to stdout when the worker is about
//! to wait for events, rather than one per line. At the shipped `info` level every
//! connection logs a line on each node, and a write per line (a syscall, and a wakeup of
//! whatever reads the pipe) was a twelfth of the tunnel's CPU in the connection-rate figure.
//!
//! A worker's batch is written out when its runtime goes idle (the park hook,
//! [`flush_thread`]), when it reaches [`FLUSH_BYTES`], no later than [`FLUSH_WITHIN`] after
//! its first line should the worker stay busy that long, and when the thread ends. Every
//! other thread writes each line as it comes. Lines of one thread keep their order; lines of
//! different threads interleave a batch at a time, each line whole.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing_subscriber::fmt::MakeWriter;

/// A batch is written as soon as it holds this much.
const FLUSH_BYTES: usize = 16 * 1024;
/// A batch is written at the latest this long after its first line.
const FLUSH_WITHIN: Duration = Duration::from_millis(50);

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// The lines a worker has logged and not written yet.
struct Batch {
    lines: Vec<u8>,
    /// Wakes the thread's flusher ([`batch_this_thread`]) when the batch gets its first line.
    started: Arc<Notify>,
    /// Where the lines go ([`write_out`]; tests collect them).
    out: fn(&[u8]),
}

impl Batch {
    fn write(&mut self) {
        if !self.lines.is_empty() {
            (self.out)(&self.lines);
            self.lines.clear();
        }
    }
}

impl Drop for Batch {
    /// The thread ends: what it logged last is written.
    fn drop(&mut self) {
        self.write();
    }
}

/// Where the log lines go: stdout, through the calling thread's batch if it has one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdout;

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

/// Takes one formatted line (the fmt layer writes each event with one `write_all`).
#[derive(Debug)]
pub struct Line;

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let batched = BATCH
            .try_with(|b| {
                // Not batched while the batch is being written (a log line from within).
                let Ok(mut b) = b.try_borrow_mut() else {
                    return false;
                };
                let Some(batch) = b.as_mut() else {
                    return false;
                };
                if batch.lines.is_empty() {
                    batch.started.notify_one();
                }
                batch.lines.extend_from_slice(buf);
                if batch.lines.len() >= FLUSH_BYTES {
                    batch.write();
                }
                true
            })
            .unwrap_or(false);
        if !batched {
            write_out(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes whole lines to stdout. A failed write loses them, as a failed direct write of a
/// log line would: logging never fails the caller.
fn write_out(lines: &[u8]) {
    if !lines.is_empty() {
        let _ = io::stdout().lock().write_all(lines);
    }
}

/// Writes the calling thread's batch, if it has one holding lines: the data workers' park
/// hook, run as their runtime goes idle.
pub fn flush_thread() {
    let _ = BATCH.try_with(|b| {
        if let Some(batch) = b.try_borrow_mut().ok().as_mut().and_then(|b| b.as_mut()) {
            batch.write();
        }
    });
}

/// Batches the log lines of the thread that polls it, from its first poll on, and writes
/// each batch [`FLUSH_WITHIN`] after its first line unless the park hook wrote it first.
/// Spawned once on each data worker; runs until the worker's runtime drops it.
pub async fn batch_this_thread() {
    batch_into(write_out).await
}

async fn batch_into(out: fn(&[u8])) {
    let started = install(out);
    loop {
        started.notified().await;
        tokio::time::sleep(FLUSH_WITHIN).await;
        flush_thread();
    }
}

/// Gives the calling thread a batch whose lines go to `out`; returns what wakes its flusher.
fn install(out: fn(&[u8])) -> Arc<Notify> {
    let started = Arc::new(Notify::new());
    BATCH.with(|b| {
        *b.borrow_mut() = Some(Batch {
            lines: Vec::new(),
            started: started.clone(),
            out,
        })
    });
    started
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;

    /// Each test's writes, one entry per write.
    type Sink = Mutex<Vec<Vec<u8>>>;

    fn lines(sink: &Sink) -> Vec<String> {
        sink.lock()
            .iter()
            .map(|w| String::from_utf8(w.clone()).unwrap())
            .collect()
    }

    fn log(text: &str) {
        Stdout.make_writer().write_all(text.as_bytes()).unwrap();
    }

    /// Lines logged while the worker runs stay in its batch, in order, and leave in one
    /// write as soon as its runtime goes idle (the park hook), not when the flusher's timer
    /// would: no flusher runs here.
    #[test]
    fn a_workers_lines_leave_in_one_write_when_it_goes_idle() {
        static SINK: Sink = Mutex::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(flush_thread)
            .build()
            .unwrap();
        rt.block_on(async {
            install(|w| SINK.lock().push(w.to_vec()));
            for i in 0..3 {
                log(&format!("line {i}\n"));
            }
            tokio::task::yield_now().await;
            assert!(lines(&SINK).is_empty(), "written while the worker was busy");
            // Nothing else to run: the runtime parks.
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(lines(&SINK), ["line 0\nline 1\nline 2\n"]);
        });
    }

    /// A batch reaching FLUSH_BYTES is written at once, whole lines only.
    #[test]
    fn a_full_batch_is_written_at_once() {
        static SINK: Sink = Mutex::new(Vec::new());
        install(|w| SINK.lock().push(w.to_vec()));
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..FLUSH_BYTES / line.len() - 1 {
            log(&line);
        }
        assert!(lines(&SINK).is_empty());
        log(&line);
        let written = lines(&SINK);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].len(), FLUSH_BYTES);
        assert!(written[0].lines().all(|l| l.len() == 1023));
    }

    /// A worker that never goes idle still writes each batch, FLUSH_WITHIN after its first
    /// line, through the flusher.
    #[test]
    fn a_busy_workers_lines_leave_through_its_flusher() {
        static SINK: Sink = Mutex::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let flusher = tokio::spawn(batch_into(|w| SINK.lock().push(w.to_vec())));
            tokio::task::yield_now().await;
            log("busy\n");
            // Busy: a task always ready, the runtime never parks.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while lines(&SINK).is_empty() {
                assert!(std::time::Instant::now() < deadline, "the line never left");
                tokio::task::yield_now().await;
            }
            assert_eq!(lines(&SINK), ["busy\n"]);
            flusher.abort();
        });
    }

    /// What a thread logged last is written as it ends; the batch was that thread's alone.
    #[test]
    fn a_batch_is_written_when_its_thread_ends() {
        static SINK: Sink = Mutex::new(Vec::new());
        std::thread::spawn(|| {
            install(|w| SINK.lock().push(w.to_vec()));
            log("last words\n");
            assert!(lines(&SINK).is_empty());
        })
        .join()
        .unwrap();
        assert_eq!(lines(&SINK), ["last words\n"]);
        BATCH.with(|b| assert!(b.borrow().is_none(), "this thread has no batch"));
    }
}
