//! Named network namespaces (the ones `ip netns` manages under `/var/run/netns`): create,
//! delete, list, run external commands in them, and run Rust code in them on a dedicated
//! thread.
//!
//! Code runs "inside" a namespace by spawning a fresh OS thread that `setns`es into it: the
//! namespace of a thread is per-thread state, so the test thread itself never moves, and the
//! thread dies with the namespace attached instead of having to switch back.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context as _};
use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

/// Directory where `ip netns` keeps the bind-mounted namespace files.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace. Dropping the handle does not delete the namespace: the
/// [`Lab`](super::Lab) that created it does, or [`cleanup_stale`](super::cleanup_stale).
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace `name` with its loopback interface up. Fails if it exists.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        run_cmd("ip", &["netns", "add", name], None)?;
        let netns = Netns::existing(name);
        if let Err(e) = netns.ip_command(&["link", "set", "lo", "up"]) {
            let _ = delete(name);
            return Err(e);
        }
        Ok(netns)
    }

    /// A handle on a namespace that already exists (no check is made).
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            path: Path::new(NETNS_DIR).join(name),
        }
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (`/var/run/netns/<name>`); opening it yields a netns fd.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file; the returned file is a network namespace fd suitable for
    /// `setns` or for passing over SCM_RIGHTS.
    pub fn open(&self) -> anyhow::Result<File> {
        File::open(&self.path).with_context(|| format!("open netns {}", self.path.display()))
    }

    /// Runs `ip -n <name> <args...>` and returns its stdout; fails with its stderr.
    pub fn ip_command(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_cmd("ip", &full, None)
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`) in this namespace
    /// with a single `ip -batch` call; stops at the first failing line.
    pub fn ip_batch(&self, lines: &[String]) -> anyhow::Result<()> {
        let input = lines.join("\n") + "\n";
        run_cmd(
            "ip",
            &["-n", &self.name, "-batch", "-"],
            Some(input.as_bytes()),
        )?;
        Ok(())
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`), optionally feeding
    /// `stdin`, and returns its stdout; fails with its stderr.
    pub fn exec(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run_cmd("ip", &full, stdin)
    }

    /// A `Command` that will run `program` inside the namespace (via `ip netns exec`, which
    /// execs the program, so the child's pid is the program's own pid).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Sets IPv4 sysctls of this namespace, given as (`net/ipv4/...` path below
    /// `/proc/sys`, value) pairs.
    pub fn set_sysctls(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        self.run(|| {
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value)
                    .with_context(|| format!("write {value} to {}", path.display()))?;
            }
            Ok(())
        })
    }

    /// Runs `f` to completion on a new OS thread inside this namespace and returns its
    /// result; a panic in `f` is re-raised here. Sockets created in `f` belong to the
    /// namespace (and keep belonging to it wherever they are used later).
    ///
    /// Panics if the namespace cannot be entered (e.g. it was deleted).
    pub fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(thread_name(&self.name))
                .spawn_scoped(scope, || {
                    self.enter_current_thread();
                    f()
                })
                .expect("spawn a thread");
            match handle.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Drives `fut` to completion on a current-thread tokio runtime running on a new OS
    /// thread inside this namespace. Everything the future creates (sockets, tasks spawned
    /// with `tokio::spawn`) lives in the namespace; `spawn_blocking` work does not.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        self.run(|| new_runtime().block_on(fut))
    }

    /// Starts `fut` on its own thread and current-thread runtime inside this namespace and
    /// returns at once. The returned [`NetnsTask`] can be awaited or joined for the output;
    /// dropping it cancels the future.
    pub fn spawn_async<F>(&self, fut: F) -> NetnsTask<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let netns = self.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name(&self.name))
            .spawn(move || {
                netns.enter_current_thread();
                new_runtime().block_on(async move {
                    tokio::select! {
                        out = fut => { let _ = result_tx.send(out); }
                        _ = cancel_rx => {}
                    }
                });
            })
            .expect("spawn a thread");
        NetnsTask {
            netns: self.name.clone(),
            result: result_rx,
            cancel: Some(cancel_tx),
            thread: Some(thread),
        }
    }

    /// Pids of the processes that live in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        run_cmd("ip", &["netns", "pids", &self.name], None)
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Moves the calling thread into this namespace, for good.
    fn enter_current_thread(&self) {
        let file = self.open().unwrap_or_else(|e| panic!("{e:#}"));
        if let Err(e) = setns(&file, CloneFlags::CLONE_NEWNET) {
            panic!("cannot enter network namespace {}: {e}", self.name);
        }
    }
}

/// The output of a future started with [`Netns::spawn_async`]. Await it (in any runtime) or
/// [`join`](NetnsTask::join) it from synchronous code. Dropping it cancels the future.
#[derive(Debug)]
pub struct NetnsTask<T> {
    netns: String,
    result: oneshot::Receiver<T>,
    cancel: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl<T> NetnsTask<T> {
    /// Blocks the calling (non-async) thread until the future finishes and returns its
    /// output; fails if it panicked (with the panic message).
    pub fn join(mut self) -> anyhow::Result<T> {
        let thread = self.thread.take().expect("joined once");
        if let Err(panic) = thread.join() {
            bail!(
                "task in netns {} panicked: {}",
                self.netns,
                panic_message(&panic)
            );
        }
        self.result
            .try_recv()
            .map_err(|_| anyhow!("task in netns {} ended without an output", self.netns))
    }

    /// Whether the future has finished (or panicked).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Cancels the future and waits for its thread to exit, so that everything it owned
    /// (listening sockets included) is closed when this returns.
    pub fn abort(mut self) {
        self.cancel.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<T> Future for NetnsTask<T> {
    type Output = anyhow::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.result).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(out)) => Poll::Ready(Ok(out)),
            Poll::Ready(Err(_)) => {
                // The sender is gone without a value: the thread panicked (or is exiting).
                let why = match this.thread.take().map(JoinHandle::join) {
                    Some(Err(panic)) => panic_message(&panic),
                    _ => "no output".to_string(),
                };
                Poll::Ready(Err(anyhow!("task in netns {} failed: {why}", this.netns)))
            }
        }
    }
}

/// Runs `program args...`, optionally writing `stdin` to it; returns stdout, or an error
/// carrying the command line and stderr.
pub fn run_cmd(program: &str, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{line}` (is {program} installed?)"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input)
            .with_context(|| format!("write stdin of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("wait for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of all named network namespaces.
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = run_cmd("ip", &["netns", "list"], None)?;
    // Lines look like `name (id: 3)` or just `name`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Kills (SIGKILL) every process still inside namespace `name`, then deletes it.
pub fn delete(name: &str) -> anyhow::Result<()> {
    let netns = Netns::existing(name);
    for pid in netns.pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    run_cmd("ip", &["netns", "delete", name], None).map(drop)
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a current-thread tokio runtime")
}

/// Linux truncates thread names to 15 bytes; keep the distinctive tail of the netns name.
fn thread_name(netns: &str) -> String {
    let start = netns.len().saturating_sub(15);
    netns.get(start..).unwrap_or(netns).to_string()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
