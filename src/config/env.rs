//! Where configuration comes from: the only reader of the process environment (and of
//! the files configuration names). [`Source`] abstracts it: [`ProcessEnv`] in production,
//! [`MapEnv`] in tests. Values are read as typed values by `vars.rs` (with the syntaxes of
//! `syntax.rs`) and assembled into a [`super::Config`] by `build.rs`.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

/// Where configuration variables come from.
pub trait Source {
    /// The value of `name`, or `None` when it is unset.
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable whose name starts with `prefix` (prefix included), sorted by name.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
    /// Whether `path` exists (decides whether a value names a file).
    fn path_exists(&self, path: &Path) -> bool;
    /// The text of the file at `path`; `Ok(None)` when there is no such file.
    fn read_file(&self, path: &Path) -> io::Result<Option<String>>;
}

/// The real process environment and filesystem. Values that are not valid UTF-8 are converted
/// lossily, so they fail to parse rather than disappear.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

// The one place that reads the process environment (.clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
impl Source for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                name.starts_with(prefix)
                    .then(|| (name, value.to_string_lossy().into_owned()))
            })
            .collect();
        vars.sort();
        vars
    }

    fn path_exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An in-memory environment, a set of paths that "exist" and the contents of some files: a
/// deterministic [`Source`] for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct MapEnv {
    vars: HashMap<String, String>,
    existing_paths: HashSet<PathBuf>,
    files: HashMap<PathBuf, String>,
}

impl MapEnv {
    /// An empty environment in which no path exists.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`.
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Makes [`Source::path_exists`] report `path` as existing.
    pub fn with_existing_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.existing_paths.insert(path.into());
        self
    }

    /// Makes `path` an existing file whose text [`Source::read_file`] returns.
    pub fn with_file(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        let path = path.into();
        self.existing_paths.insert(path.clone());
        self.files.insert(path, text.into());
        self
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        iter.into_iter().fold(MapEnv::new(), |env, (name, value)| {
            env.with_var(name, value)
        })
    }
}

impl Source for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = self
            .vars
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        vars.sort();
        vars
    }

    fn path_exists(&self, path: &Path) -> bool {
        self.existing_paths.contains(path)
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<String>> {
        Ok(self.files.get(path).cloned())
    }
}
