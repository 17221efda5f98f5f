//! The shared state between the control side (writer) and the data plane (readers).
//!
//! The control side builds the next [`Snapshot`] off to the side and publishes it with one
//! atomic pointer swap per update (one generation per xDS response or local file load), so a
//! reader always sees a consistent mesh. A generation shares everything its update did not
//! touch with the previous one (see `shards`), and the mesh's repeated strings are held once
//! (see `intern`). Readers decide synchronously over a snapshot; they
//! never hold a loaded guard across `.await` (use [`Reader::load_full`] for that).
//!
//! Allowed imports: `identity`, `state::model`. Never `control/` or generated proto code.

mod intern;
pub mod model;
mod shards;
mod snapshot;
mod vecmap;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use intern::{len as interned_strings, purge_now as purge_interned};
pub use snapshot::{canonical_ip, Snapshot, SnapshotBuilder};

/// Replaces the workload's repeated strings (namespace, service account, node, service keys,
/// ...) by their shared copies, as inserting it into a builder does. A loader that decodes
/// many workloads before inserting them calls it on each as it is decoded, so the duplicates
/// are freed at once instead of all staying live until the insert (which leaves the heap
/// fragmented: freed holes between the values that stay).
pub fn share_workload_strings(w: &mut model::Workload) {
    intern::with(|i| snapshot::intern_workload(i, w));
}

/// As [`share_workload_strings`], for a service.
pub fn share_service_strings(s: &mut model::Service) {
    intern::with(|i| snapshot::intern_service(i, s));
}

/// The table of the mesh's shared strings, locked for as long as this value lives: a decoder
/// takes it for one resource and builds the resource's repeated strings (namespace, service
/// account, node, service keys, ...) with [`SharedStrings::share`], so that a string the
/// mesh already holds is never allocated again. The value is then inserted with
/// [`SnapshotBuilder::insert_shared_workload`] / [`SnapshotBuilder::insert_shared_service`]
/// (after this is dropped: inserting locks the table too).
pub struct SharedStrings(parking_lot::MutexGuard<'static, intern::Interner>);

impl SharedStrings {
    /// Locks the table.
    pub fn lock() -> SharedStrings {
        SharedStrings(intern::lock())
    }

    /// The shared copy of `s` (a new one if the mesh does not hold `s` yet).
    pub fn share(&mut self, s: &str) -> model::Strng {
        self.0.share(s)
    }
}

/// Drops the shared strings nothing holds any more, when enough came in since the last time
/// (amortized: a few at a time cost nothing). For strings shared by resources that were then
/// rejected, with nothing published to run it.
pub fn release_unused_strings() {
    intern::purge();
}

/// Whether `s` is held by the shared string table (tests).
#[cfg(test)]
pub(crate) fn is_shared_string(s: &str) -> bool {
    intern::contains(s)
}

/// Creates an empty store, returning its single writer and a reader factory.
pub fn new() -> (Writer, Reader) {
    new_for_node(None)
}

/// As [`new`], for a store that keeps the workloads of `node` listed apart
/// ([`Snapshot::local_workloads`]).
pub fn new_for_node(node: Option<&str>) -> (Writer, Reader) {
    let snap = Arc::new(Snapshot::for_node(node));
    let (tx, rx) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        current: ArcSwap::new(snap),
        changed: tx,
    });
    (
        Writer {
            shared: shared.clone(),
        },
        Reader {
            shared,
            changed: rx,
        },
    )
}

struct Shared {
    current: ArcSwap<Snapshot>,
    /// Carries the generation of the latest published snapshot.
    changed: watch::Sender<u64>,
}

/// Read access to the mesh state. Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
}

impl Reader {
    /// The current snapshot: one atomic load, no allocation. Do not hold across `.await`.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.shared.current.load()
    }

    /// The current snapshot as an owned `Arc`, safe to keep across `.await`.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// Waits until a snapshot newer than the last one this reader observed is published.
    /// Returns `false` if the writer is gone (no update will ever come).
    pub async fn changed(&mut self) -> bool {
        self.changed.changed().await.is_ok()
    }
}

/// The single writer of the mesh state (owned by the control side).
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Publishes a new generation built by `builder`.
    pub fn publish(&self, mut builder: SnapshotBuilder) -> Arc<Snapshot> {
        let previous = self.shared.current.load();
        builder.warn_unmatchable(&previous);
        builder.succeed(&previous);
        let generation = previous.generation() + 1;
        drop(previous);
        let snap = Arc::new(builder.build(generation));
        self.shared.current.store(snap.clone());
        self.shared.changed.send_replace(generation);
        intern::purge();
        snap
    }

    /// A builder holding the current contents, to apply a delta to.
    pub fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder::from_snapshot(&self.shared.current.load())
    }

    /// A reader of this store.
    pub fn reader(&self) -> Reader {
        Reader {
            shared: self.shared.clone(),
            changed: self.shared.changed.subscribe(),
        }
    }
}
