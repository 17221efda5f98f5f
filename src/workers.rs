//! The data plane's workers: one thread per worker (`ztun-data-N`), each driving a
//! current-thread tokio runtime of its own.
//!
//! A pod's listeners are bound once per worker in one SO_REUSEPORT group, so the kernel
//! spreads the pod's connections over the workers. A connection's task, the pooled HBONE
//! connection it rides (pools are kept per worker) and the streams an accepted HBONE
//! connection carries all stay on the worker that accepted them: every hand-off between
//! them is a wakeup within one thread, queued behind the tasks already woken, so the frames
//! of the streams woken by one readiness event leave in one write. tokio's multi-thread
//! scheduler instead runs a task woken by the running one next (its LIFO slot), writing
//! each stream's frame on its own, and moves tasks between threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;

thread_local! {
    /// This thread's worker number; 0 outside the data workers.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is (0 on any other thread).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// The workers' runtime handles. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Workers {
    handles: Arc<[Handle]>,
    /// The worker the next pod's own tasks go to.
    next: Arc<AtomicUsize>,
}

impl Workers {
    /// Every worker's handle, in worker order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// A worker for one pod's own tasks (its drain, its late enforcement, its DNS proxy):
    /// the pods take turns, so their DNS traffic does not all land on one thread.
    pub fn home(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// One "worker" running on the caller's runtime: for unit tests that read the data
    /// plane's figures from their own runtime.
    #[cfg(test)]
    pub fn current() -> Workers {
        Workers::of(vec![Handle::current()])
    }

    fn of(handles: Vec<Handle>) -> Workers {
        Workers {
            handles: handles.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// The running worker threads; [`Threads::shutdown`] stops them.
pub struct Threads {
    running: Vec<(
        tokio::sync::oneshot::Sender<Duration>,
        std::thread::JoinHandle<()>,
    )>,
}

/// How many workers `ZTUNNEL_WORKER_THREADS` (`configured`) starts: at least one. Whatever
/// is kept per worker elsewhere (a pod's HBONE pools) is sized by this too.
pub fn count(configured: usize) -> usize {
    configured.max(1)
}

/// Starts [`count`]`(configured)` workers, each on a thread of its own. Each runs `idle`
/// whenever its runtime is about to wait for events.
pub fn start(configured: usize, idle: fn()) -> anyhow::Result<(Workers, Threads)> {
    let mut handles = Vec::new();
    let mut running = Vec::new();
    for i in 0..count(configured) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(idle)
            .build()
            .context("building a data-plane runtime")?;
        handles.push(rt.handle().clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<Duration>();
        let thread = std::thread::Builder::new()
            .name(format!("ztun-data-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                // Tasks spawned through the handle run while this thread drives the runtime.
                let grace = rt.block_on(stopped).unwrap_or(Duration::ZERO);
                rt.shutdown_timeout(grace);
            })
            .context("starting a data-plane thread")?;
        running.push((stop, thread));
    }
    Ok((Workers::of(handles), Threads { running }))
}

impl Threads {
    /// Stops every worker, giving their tasks up to `grace` (together) to finish being
    /// dropped.
    pub fn shutdown(self, grace: Duration) {
        let joins: Vec<_> = self
            .running
            .into_iter()
            .map(|(stop, thread)| {
                let _ = stop.send(grace);
                thread
            })
            .collect();
        for thread in joins {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each worker is a thread of its own that knows its number; a pod's tasks take turns.
    #[test]
    fn workers_run_on_their_own_numbered_threads() {
        let (workers, threads) = start(3, || {}).unwrap();
        let mut seen = Vec::new();
        for (i, h) in workers.handles().iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            h.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((index(), name));
            });
            let (index, name) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(index, i);
            assert_eq!(name.as_deref(), Some(format!("ztun-data-{i}").as_str()));
            seen.push(index);
        }
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(index(), 0, "the test's own thread is no worker");
        let homes: Vec<_> = (0..4)
            .map(|_| {
                let h = workers.home();
                workers
                    .handles()
                    .iter()
                    .position(|w| w.id() == h.id())
                    .unwrap()
            })
            .collect();
        assert_eq!(homes, [0, 1, 2, 0]);
        threads.shutdown(Duration::from_secs(1));
    }

    /// A worker runs the idle hook on its own thread each time its runtime is about to
    /// wait: the log batches leave then.
    #[test]
    fn a_worker_runs_the_idle_hook_on_its_thread_before_it_waits() {
        static IDLE_ON: parking_lot::Mutex<Vec<usize>> = parking_lot::Mutex::new(Vec::new());
        let (workers, threads) = start(2, || IDLE_ON.lock().push(index())).unwrap();
        for (i, h) in workers.handles().iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            h.spawn(async move {
                // Nothing to run for a moment: the runtime goes idle.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = tx.send(());
            });
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(IDLE_ON.lock().contains(&i), "worker {i}");
        }
        threads.shutdown(Duration::from_secs(1));
    }
}
