//! Where log lines go: a queue drained by a thread of its own, so the thread that logs (the
//! data plane writing a connection's access-log line) never makes the write syscall itself or
//! waits for the reader of stdout. The writer thread lets lines gather for [`COALESCE`] after
//! the first one and writes them together: under a high connection rate many access-log lines
//! share one wake-up and one syscall.
//!
//! Nothing is dropped: a producer that finds [`QUEUE_LIMIT`] bytes queued waits until the
//! thread has taken them. [`LogOutput::flush`] waits until everything queued so far is written.

use std::io::Write;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// Bytes queued at most before a producer waits for the writer thread.
pub const QUEUE_LIMIT: usize = 1 << 20;

/// How long the writer thread lets lines gather after the first one arrives: a line reaches
/// stdout at most this much later than it was logged.
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

/// The producers' end of the queue; cheap to clone. As a `MakeWriter`, each event's line is
/// handed over in one piece.
#[derive(Clone)]
pub struct LogOutput {
    shared: Arc<Shared>,
}

struct Shared {
    /// Held to queue a line or to take the queue; never across the write syscall.
    state: Mutex<State>,
    /// Signalled when the queue gets its first line (wakes the writer thread).
    queued: Condvar,
    /// Signalled when the writer thread has taken the queue or finished writing it (wakes
    /// producers waiting for room and [`LogOutput::flush`]).
    taken: Condvar,
}

#[derive(Default)]
struct State {
    queue: Vec<u8>,
    /// Whether the writer thread is writing a batch it took.
    writing: bool,
}

impl LogOutput {
    /// Starts the writer thread, which writes every batch to `sink` and flushes it.
    pub fn spawn(mut sink: impl Write + Send + 'static) -> std::io::Result<LogOutput> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            taken: Condvar::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("ztun-log".into())
            .spawn(move || {
                let mut batch = Vec::new();
                loop {
                    {
                        let mut state = writer.state.lock();
                        state.writing = false;
                        writer.taken.notify_all();
                        while state.queue.is_empty() {
                            writer.queued.wait(&mut state);
                        }
                    }
                    // The lines of the next moment join this batch: one wake-up and one
                    // write for many connections' lines, not one per line.
                    std::thread::sleep(COALESCE);
                    {
                        let mut state = writer.state.lock();
                        std::mem::swap(&mut state.queue, &mut batch);
                        state.writing = true;
                        writer.taken.notify_all();
                    }
                    // A failed write (stdout closed) loses the batch, as a failed synchronous
                    // write would have lost the line.
                    let _ = sink.write_all(&batch).and_then(|()| sink.flush());
                    batch.clear();
                }
            })?;
        Ok(LogOutput { shared })
    }

    /// Queues `line` (one or more whole lines), waiting while the queue is full.
    pub fn push(&self, line: &[u8]) {
        let mut state = self.shared.state.lock();
        while state.queue.len() >= QUEUE_LIMIT {
            self.shared.taken.wait(&mut state);
        }
        let wake = state.queue.is_empty();
        state.queue.extend_from_slice(line);
        if wake {
            self.shared.queued.notify_one();
        }
    }

    /// Waits until every line queued before the call has been written to the sink.
    pub fn flush(&self) {
        let mut state = self.shared.state.lock();
        while !state.queue.is_empty() || state.writing {
            self.shared.taken.wait(&mut state);
        }
    }
}

impl Write for LogOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Lines are written in order by the writer thread; a caller's flush does not wait.
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogOutput {
    type Writer = LogOutput;

    fn make_writer(&'a self) -> LogOutput {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A sink that records each write call and blocks its first one until released.
    struct GatedSink {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        entered: Option<mpsc::Sender<()>>,
        release: Option<mpsc::Receiver<()>>,
    }

    impl Write for GatedSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let (Some(entered), Some(release)) = (self.entered.take(), self.release.take()) {
                let _ = entered.send(());
                let _ = release.recv();
            }
            self.writes.lock().push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// While the sink is busy (stdout's reader slow), logging does not wait for it, and the
    /// lines logged meanwhile reach the sink together, in order, in one write.
    #[test]
    fn lines_queued_while_the_sink_is_busy_go_out_in_one_write() {
        let deadline = std::time::Duration::from_secs(30);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let out = LogOutput::spawn(GatedSink {
            writes: writes.clone(),
            entered: Some(entered_tx),
            release: Some(release_rx),
        })
        .expect("writer thread");
        let (go, go_rx) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let mut producer = out.clone();
        std::thread::spawn(move || {
            producer.write_all(b"first\n").expect("queued");
            let _ = done_tx.send("first");
            if go_rx.recv().is_ok() {
                for i in 0..10 {
                    producer
                        .write_all(format!("line {i}\n").as_bytes())
                        .expect("queued");
                }
                let _ = done_tx.send("rest");
            }
        });
        entered
            .recv_timeout(deadline)
            .expect("the writer thread took the first line");
        // The sink now blocks in its first write: the producer must not wait for it.
        let logged = done.recv_timeout(deadline);
        go.send(()).expect("producer alive");
        let logged_rest = done.recv_timeout(deadline);
        release.send(()).expect("release the sink");
        assert_eq!(logged, Ok("first"), "logging waited for a busy sink");
        assert_eq!(logged_rest, Ok("rest"), "logging waited for a busy sink");
        out.flush();
        let writes = writes.lock().clone();
        let expected: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(writes, vec![b"first\n".to_vec(), expected.into_bytes()]);
    }

    /// Nothing queued is lost or reordered, across many batches.
    #[test]
    fn every_line_arrives_in_order() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let out = LogOutput::spawn(GatedSink {
            writes: writes.clone(),
            entered: None,
            release: None,
        })
        .expect("writer thread");
        let mut w = out.clone();
        for i in 0..10_000 {
            w.write_all(format!("{i}\n").as_bytes()).expect("queued");
        }
        out.flush();
        let all: Vec<u8> = writes.lock().concat();
        let expected: String = (0..10_000).map(|i| format!("{i}\n")).collect();
        assert_eq!(String::from_utf8(all).expect("utf-8"), expected);
    }
}
