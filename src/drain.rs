//! Drain signalling: a [`Trigger`] tells every cloned [`Watch`] to stop.
//!
//! Used at two levels: the whole process (SIGTERM) and one pod (ZDS `del`). Tasks select on
//! [`Watch::signaled`] next to their work; the trigger side can wait until every watch is
//! dropped, which is how shutdown knows all connections are gone.

use tokio::sync::watch;

/// How urgently watchers should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        let _ = self.rx.wait_for(|m| *m == Some(DrainMode::Immediate)).await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.rx.borrow().is_some()
    }
}
