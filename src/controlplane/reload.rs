//! Values read from small files (the CA directory, the tokens file, the mesh file's schedule)
//! and re-read when one of the files changes, without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

/// A value loaded from files and reloaded when one of them changes (size, mtime or inode).
pub(crate) struct Reloading<T> {
    files: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    // Lock: held to compare fingerprints and swap the value; reloading (small files) happens
    // under it so concurrent requests do not all reload.
    current: Mutex<(Vec<Option<Stamp>>, Arc<T>)>,
}

type Stamp = (SystemTime, u64, u64);

impl<T> Reloading<T> {
    pub(crate) fn new(
        files: Vec<PathBuf>,
        initial: T,
        load: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    ) -> Reloading<T> {
        Reloading {
            current: Mutex::new((stamps(&files), Arc::new(initial))),
            files,
            load,
        }
    }

    /// The current value, reloaded first if a file changed; a failed reload keeps the old
    /// value until the files change again.
    pub(crate) fn get(&self) -> Arc<T> {
        let now = stamps(&self.files);
        let mut current = self.current.lock();
        if current.0 != now {
            match (self.load)() {
                Ok(v) => {
                    tracing::info!(files = ?self.files, "reloaded");
                    current.1 = Arc::new(v);
                }
                Err(e) => tracing::error!(
                    files = ?self.files,
                    error = %e,
                    "reload failed; keeping the previous content"
                ),
            }
            current.0 = now;
        }
        current.1.clone()
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}
