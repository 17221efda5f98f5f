//! Drain signalling: a [`Trigger`] tells every cloned [`Watch`] to stop.
//!
//! Used at two levels: the whole process (SIGTERM) and one pod (ZDS `del`). Tasks select on
//! [`Watch::signaled`] next to their work; the trigger side can wait until every watch is
//! dropped, which is how shutdown knows all connections are gone. A pod's tasks hold one
//! watch, [`merge`]d from both levels: one wait per connection instead of two.
//!
//! Every connection's task waits for the immediate stage for its whole life, so that wait is
//! kept small: a flag and a slab of wakers shared by the trigger and its watches
//! ([`Watch::immediate`] is a two-word future and a slab entry), not a wait on the watch
//! channel's next change (a ~128-byte future per task).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use slab::Slab;
use tokio::sync::watch;

/// How urgently watchers should stop; ordered by urgency (`Immediate` is the greater).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainMode {
    /// Stop accepting, let in-flight work finish (until the owner's deadline).
    Graceful,
    /// Stop now.
    Immediate,
}

/// The sending side. Dropping it without [`Trigger::start`] signals `Immediate`.
#[must_use = "dropping the trigger drains every watcher immediately"]
pub struct Trigger {
    tx: watch::Sender<Option<DrainMode>>,
    immediate: Arc<Immediate>,
}

/// A cloneable receiver of the drain signal.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<Option<DrainMode>>,
    immediate: Arc<Immediate>,
}

/// The immediate stage of one trigger: set once, never cleared; the wakers of the tasks
/// waiting for it.
#[derive(Default)]
struct Immediate {
    fired: AtomicBool,
    waiters: Mutex<Slab<Waker>>,
}

impl Immediate {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        // Taken whole: no wait registers once the flag is set (it is checked under the lock).
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

/// A wait for the immediate stage ([`Watch::immediate`]).
#[must_use = "futures do nothing unless polled"]
pub struct ImmediateWait<'a> {
    signal: &'a Immediate,
    /// This wait's waker in the signal's slab, once registered ([`UNREGISTERED`] before).
    key: usize,
}

/// The key of a wait whose waker is not in the slab (a slab holds fewer entries).
const UNREGISTERED: usize = usize::MAX;

impl Future for ImmediateWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        let mut waiters = this.signal.waiters.lock();
        // Again under the lock: `fire` sets the flag before it takes the wakers, so a wait
        // that finds it unset here is registered in the slab `fire` will take.
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        match waiters.get_mut(this.key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => *waker = cx.waker().clone(),
            None => this.key = waiters.insert(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ImmediateWait<'_> {
    fn drop(&mut self) {
        if self.key != UNREGISTERED {
            let mut waiters = self.signal.waiters.lock();
            // Once fired, the slab is a new, empty one that no key of ours is in.
            if !self.signal.is_fired() {
                waiters.try_remove(self.key);
            }
        }
    }
}

/// A new trigger with its first watch.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(None);
    let immediate = Arc::new(Immediate::default());
    (
        Trigger {
            tx,
            immediate: immediate.clone(),
        },
        Watch { rx, immediate },
    )
}

/// One watch that follows the more urgent of `a` and `b` (a dropped trigger counts as
/// `Immediate`), and the future that feeds it, to be spawned. The feeder holds `a` and `b`
/// until every holder of the merged watch is gone, so the `closed()` of their triggers still
/// waits for those holders.
pub fn merge(mut a: Watch, mut b: Watch) -> (Watch, impl std::future::Future<Output = ()>) {
    let (trigger, merged) = channel();
    let feed = async move {
        loop {
            // `None` (not draining) orders below either mode.
            let mode = a.state().max(b.state());
            if let Some(mode) = mode {
                if *trigger.tx.borrow() != Some(mode) {
                    trigger.start(mode);
                }
            }
            if mode == Some(DrainMode::Immediate) {
                break;
            }
            tokio::select! {
                _ = a.rx.changed() => {}
                _ = b.rx.changed() => {}
                _ = trigger.closed() => return,
            }
        }
        trigger.closed().await;
    };
    (merged, feed)
}

impl Trigger {
    /// Signals every watch.
    pub fn start(&self, mode: DrainMode) {
        self.tx.send_replace(Some(mode));
        if mode == DrainMode::Immediate {
            self.immediate.fire();
        }
    }

    /// Resolves once every watch has been dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// A new watch on this trigger.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            immediate: self.immediate.clone(),
        }
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        // A dropped trigger is an immediate drain (the watch channel says so by closing).
        self.immediate.fire();
    }
}

impl Watch {
    /// Resolves when draining starts (or the trigger is dropped: then `Immediate`).
    pub async fn signaled(&mut self) -> DrainMode {
        match self.rx.wait_for(Option::is_some).await {
            Ok(mode) => mode.unwrap_or(DrainMode::Immediate),
            Err(_) => DrainMode::Immediate,
        }
    }

    /// Resolves only when draining becomes `Immediate` (or the trigger is dropped); a graceful
    /// drain lets the caller's work run to completion.
    pub fn immediate(&mut self) -> ImmediateWait<'_> {
        ImmediateWait {
            signal: &self.immediate,
            key: UNREGISTERED,
        }
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// The current mode; a dropped trigger is `Immediate`.
    fn state(&self) -> Option<DrainMode> {
        if self.rx.has_changed().is_err() {
            return Some(DrainMode::Immediate);
        }
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    /// Every connection's task holds an `immediate` wait for its whole life: two words, and
    /// a slab entry while it waits, not a wait on the watch channel's next change.
    #[test]
    fn the_immediate_wait_is_two_words() {
        let (_trigger, mut watch) = channel();
        let change = std::mem::size_of_val(&watch.rx.changed());
        let immediate = std::mem::size_of_val(&watch.immediate());
        assert!(immediate <= 16, "immediate wait {immediate} B");
        assert!(change >= 4 * immediate, "a change wait is only {change} B");
    }

    /// Every waiting task wakes when the drain turns immediate, wherever it runs; a wait
    /// that ends or is dropped leaves nothing registered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_wait_wakes_and_none_stays_registered() {
        let (trigger, watch) = channel();
        let registered = || watch.immediate.waiters.lock().len();
        // Polled once, then dropped before the drain: its entry goes with it.
        {
            let mut dropped = watch.clone();
            let mut wait = std::pin::pin!(dropped.immediate());
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx).is_pending())).await;
            assert!(pending, "an immediate wait with no drain started");
            assert_eq!(registered(), 1);
        }
        assert_eq!(registered(), 0, "the dropped wait left its entry");
        let waits: Vec<_> = (0..500)
            .map(|_| {
                let mut w = watch.clone();
                tokio::spawn(async move { w.immediate().await })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        while registered() < 500 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} waiting",
                registered()
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(registered(), 500);
        trigger.start(DrainMode::Immediate);
        for w in waits {
            tokio::time::timeout(WAIT, w).await.unwrap().unwrap();
        }
        assert_eq!(registered(), 0);
        // Once immediate, a new wait is ready at once.
        let mut late = watch.clone();
        tokio::time::timeout(WAIT, late.immediate()).await.unwrap();
    }

    /// A dropped trigger ends the immediate waits as an immediate drain does.
    #[tokio::test]
    async fn a_dropped_trigger_is_immediate() {
        let (trigger, mut watch) = channel();
        let mut other = watch.clone();
        let waiting = tokio::spawn(async move { other.immediate().await });
        tokio::task::yield_now().await;
        drop(trigger);
        tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
        tokio::time::timeout(WAIT, watch.immediate()).await.unwrap();
        assert_eq!(watch.signaled().await, DrainMode::Immediate);
    }

    #[tokio::test]
    async fn a_graceful_drain_is_not_immediate() {
        let (trigger, mut watch) = channel();
        trigger.start(DrainMode::Graceful);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watch.immediate())
                .await
                .is_err(),
            "a graceful drain ended the wait"
        );
        trigger.start(DrainMode::Immediate);
        tokio::time::timeout(WAIT, watch.immediate()).await.unwrap();
    }

    #[tokio::test]
    async fn a_merged_watch_follows_the_more_urgent_drain_and_holds_both_open() {
        let (pod, pod_watch) = channel();
        let (process, process_watch) = channel();
        let (mut merged, feed) = merge(pod_watch, process_watch);
        let feeder = tokio::spawn(feed);
        assert!(!merged.is_draining());

        process.start(DrainMode::Graceful);
        let mode = tokio::time::timeout(WAIT, merged.signaled()).await.unwrap();
        assert_eq!(mode, DrainMode::Graceful);

        // The pod's trigger goes away: that is an immediate drain.
        let mut holder = merged.clone();
        drop(pod);
        tokio::time::timeout(WAIT, holder.immediate())
            .await
            .unwrap();

        // The process's closed() waits for the merged watch's holders, through the feeder.
        let closed = process.closed();
        tokio::pin!(closed);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut closed)
                .await
                .is_err(),
            "closed while watches of the merged drain are held"
        );
        drop((merged, holder));
        tokio::time::timeout(WAIT, closed).await.unwrap();
        tokio::time::timeout(WAIT, feeder).await.unwrap().unwrap();
    }
}
