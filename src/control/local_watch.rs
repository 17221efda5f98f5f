//! Live reload of the local mesh file (`LOCAL_XDS_PATH`): when the file changes, its new
//! contents replace the mesh state, as a fresh load would.
//!
//! The file is polled (stat every [`POLL_INTERVAL`]; read only when its size, modification
//! time or inode changed; published only when its bytes changed, told by their length and a
//! 64-bit hash: the watcher keeps no copy of a file that can be tens of megabytes) rather
//! than watched with inotify: polling also sees atomic replacements (write + rename),
//! bind-mount and ConfigMap symlink swaps, and costs one `stat` per interval. A file that does not parse is logged
//! and ignored: the previous state stays, so a bad edit never widens or drops policy.
//!
//! Allowed imports: `control::local`, `state`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::local::{self, LocalConfig};
use crate::state::Writer;

/// How often the file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Watches one local mesh file and republishes the state when it changes.
pub struct LocalWatcher {
    path: PathBuf,
    interval: Duration,
    seen: Option<Stamp>,
    /// Length and hash of the bytes last read.
    contents: Option<(usize, u64)>,
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    device: u64,
}

impl LocalWatcher {
    /// A watcher of `path`. The file's current contents count as already published (the
    /// caller loaded them at startup), so the first change is the first reload.
    pub fn new(path: PathBuf) -> Self {
        let seen = stamp(&path);
        let contents = std::fs::read(&path).ok().map(|b| digest(&b));
        LocalWatcher {
            path,
            interval: POLL_INTERVAL,
            seen,
            contents,
        }
    }

    /// Checks every `interval` instead of [`POLL_INTERVAL`].
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Polls forever, publishing each valid new version of the file through `writer`.
    /// Blocking file reads are tiny and happen on the calling (control) runtime.
    pub async fn run(mut self, writer: Writer) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(config) = self.poll() {
                publish(&writer, config);
            }
        }
    }

    /// One check: the new configuration if the file changed to a valid one.
    fn poll(&mut self) -> Option<LocalConfig> {
        let now = stamp(&self.path);
        if now == self.seen {
            return None;
        }
        self.seen = now;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the local mesh file; keeping the current state");
                return None;
            }
        };
        let digest = digest(&bytes);
        if self.contents == Some(digest) {
            return None;
        }
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|text| local::parse(text).map_err(|e| e.to_string()));
        drop(bytes);
        self.contents = Some(digest);
        match parsed {
            Ok(config) => Some(config),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "local mesh file is invalid; keeping the current state");
                None
            }
        }
    }
}

/// What tells two versions of the file apart without keeping one: length and SipHash of the
/// bytes (an edit colliding by chance: ~1 in 2^64).
fn digest(bytes: &[u8]) -> (usize, u64) {
    use std::hash::Hasher as _;
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    (bytes.len(), h.finish())
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
        device: m.dev(),
    })
}

/// Replaces the whole mesh state with `config`, in one generation.
pub fn publish(writer: &Writer, config: LocalConfig) {
    let (w, s, p) = (
        config.workloads.len(),
        config.services.len(),
        config.policies.len(),
    );
    let mut b = writer.builder();
    b.clear();
    config
        .workloads
        .into_iter()
        .for_each(|x| b.insert_workload(x));
    config
        .services
        .into_iter()
        .for_each(|x| b.insert_service(x));
    config.policies.into_iter().for_each(|x| b.insert_policy(x));
    let snap = writer.publish(b);
    crate::sys::alloc::release_free_memory();
    tracing::info!(
        generation = snap.generation(),
        workloads = w,
        services = s,
        policies = p,
        "local mesh file reloaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str =
        "workloads:\n- uid: a\n  name: a\n  namespace: ns\n  workloadIps: [10.0.0.1]\n";
    const TWO: &str = "workloads:\n- uid: a\n  name: a\n  namespace: ns\n  workloadIps: [10.0.0.1]\n- uid: b\n  name: b\n  namespace: ns\n  workloadIps: [10.0.0.2]\n";

    fn write_atomically(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test]
    async fn reloads_changes_and_ignores_invalid_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, ONE).unwrap();
        let (writer, reader) = crate::state::new();
        publish(&writer, local::load(&path).unwrap());
        let mut watcher = LocalWatcher::new(path.clone());
        assert!(watcher.poll().is_none(), "nothing changed yet");

        write_atomically(&path, TWO);
        let config = watcher.poll().expect("change seen");
        assert_eq!(config.workloads.len(), 2);
        publish(&writer, config);
        assert_eq!(reader.load().workloads().count(), 2);

        write_atomically(&path, "workloads: [ {bogus");
        assert!(watcher.poll().is_none(), "invalid file ignored");
        // Same bytes rewritten: no new generation.
        write_atomically(&path, TWO);
        assert_eq!(watcher.poll().map(|c| c.workloads.len()), Some(2));
        write_atomically(&path, TWO);
        assert!(
            watcher.poll().is_none(),
            "identical contents are not republished"
        );

        // The task publishes on its own.
        let generation = reader.load().generation();
        let mut reader = writer.reader();
        let task = tokio::spawn(
            LocalWatcher::new(path.clone())
                .with_interval(Duration::from_millis(10))
                .run(writer),
        );
        write_atomically(&path, ONE);
        tokio::time::timeout(Duration::from_secs(5), reader.changed())
            .await
            .expect("republished");
        assert!(reader.load().generation() > generation);
        assert_eq!(reader.load().workloads().count(), 1);
        task.abort();
    }
}
