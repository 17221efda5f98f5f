//! One copy of each repeated string of the mesh: namespaces, service accounts, nodes, trust
//! domains, networks, service keys… are shared by every workload that names them instead of
//! being allocated once per workload.
//!
//! Strings nobody else holds any more are dropped by [`purge`], which the writer runs after a
//! publish once enough new strings came in since the last purge (amortized O(1) per string).

use std::sync::{Arc, LazyLock};

// foldhash (hashbrown's default hasher), not std's SipHash: every repeated string of every
// resource is looked up here.
use hashbrown::HashSet;

use parking_lot::Mutex;

use super::model::Strng;

/// The interned strings.
#[derive(Default)]
pub(super) struct Interner {
    set: HashSet<Strng>,
    added_since_purge: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(Default::default);

impl Interner {
    /// The shared copy of `s` (`s` itself when it is new).
    pub(super) fn intern(&mut self, s: &mut Strng) {
        if let Some(shared) = self.set.get(&**s) {
            if !Arc::ptr_eq(shared, s) {
                *s = shared.clone();
            }
            return;
        }
        self.set.insert(s.clone());
        self.added_since_purge += 1;
    }

    /// The shared copy of `s`, allocated only when `s` is new: a decoder that shares its
    /// strings as it builds a value never allocates the repeated ones at all.
    pub(super) fn share(&mut self, s: &str) -> Strng {
        if let Some(shared) = self.set.get(s) {
            return shared.clone();
        }
        let shared: Strng = s.into();
        self.set.insert(shared.clone());
        self.added_since_purge += 1;
        shared
    }

    fn purge(&mut self, force: bool) {
        if !force && self.added_since_purge * 2 < self.set.len().max(1024) {
            return;
        }
        self.set.retain(|s| Arc::strong_count(s) > 1);
        self.set.shrink_to_fit();
        self.added_since_purge = 0;
    }
}

/// Runs `f` with the interner locked (once for all the strings of one resource).
pub(super) fn with<R>(f: impl FnOnce(&mut Interner) -> R) -> R {
    f(&mut INTERNER.lock())
}

/// The interner, locked until the guard is dropped.
pub(super) fn lock() -> parking_lot::MutexGuard<'static, Interner> {
    INTERNER.lock()
}

/// Drops the strings only the interner holds, when enough were added since the last purge.
pub(super) fn purge() {
    INTERNER.lock().purge(false);
}

/// Drops every string only the interner holds, now.
pub fn purge_now() {
    INTERNER.lock().purge(true);
}

/// Whether `s` is interned.
#[cfg(test)]
pub(super) fn contains(s: &str) -> bool {
    INTERNER.lock().set.contains(s)
}

/// Number of strings interned.
pub fn len() -> usize {
    INTERNER.lock().set.len()
}
