//! Drain signalling: a [`Trigger`] tells every cloned [`Watch`] to stop.
//!
//! Used at two levels: the whole process (SIGTERM) and one pod (ZDS `del`). Tasks select on
//! [`Watch::signaled`] next to their work; the trigger side can wait until every watch is
//! dropped, which is how shutdown knows all connections are gone. A pod's tasks hold one
//! watch, [`merge`]d from both levels: one wait per connection instead of two.

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
}

/// A cloneable receiver of the drain signal.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<Option<DrainMode>>,
}

/// A new trigger with its first watch.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(None);
    (Trigger { tx }, Watch { rx })
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
            if mode.is_some() && *trigger.tx.borrow() != mode {
                trigger.tx.send_replace(mode);
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
    }

    /// Resolves once every watch has been dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// A new watch on this trigger.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
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
    pub async fn immediate(&mut self) {
        // A loop over `changed` rather than `wait_for`, whose future is larger: every
        // connection's task holds this one for its whole life.
        loop {
            if *self.rx.borrow_and_update() == Some(DrainMode::Immediate) {
                return;
            }
            if self.rx.changed().await.is_err() {
                return;
            }
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

    /// Every connection's task holds an `immediate` wait for its whole life: it is one wait
    /// for a change, the watch's borrow and its state, not a larger `wait_for`.
    #[test]
    fn the_immediate_wait_is_one_change_wait() {
        let (_trigger, mut watch) = channel();
        let change = std::mem::size_of_val(&watch.rx.changed());
        let immediate = std::mem::size_of_val(&watch.immediate());
        assert!(
            immediate <= change + 3 * 8,
            "immediate wait {immediate} B, a change wait {change} B"
        );
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
