//! Supervised child processes (ztun itself, tcpdump, ...): stdout and stderr are captured line
//! by line into a buffer tests can wait on, and echoed to the test's stderr with a label so a
//! failing test shows what the process said. Children are killed when their handle drops.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::{Condvar, Mutex};

/// How many trailing log lines an error message quotes.
const TAIL: usize = 30;

/// A child process under supervision. SIGKILLed (and reaped) on drop.
pub struct Process {
    label: String,
    pid: u32,
    child: Arc<Mutex<Child>>,
    logs: Arc<LogBuffer>,
}

/// A `ztun` process started by [`Lab::spawn_ztun`](super::Lab::spawn_ztun).
pub type ZtunProcess = Process;

/// Output lines of both streams, in arrival order, plus how many streams are still open.
struct LogBuffer {
    state: Mutex<LogState>,
    grew: Condvar,
}

struct LogState {
    lines: Vec<String>,
    open_streams: usize,
}

impl Process {
    /// Starts `cmd` with stdin closed and stdout/stderr captured; `label` prefixes the echoed
    /// lines (e.g. the node name).
    pub fn spawn(label: &str, mut cmd: Command) -> anyhow::Result<Process> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("[{label}] cannot start {cmd:?}"))?;
        let logs = Arc::new(LogBuffer {
            state: Mutex::new(LogState {
                lines: Vec::new(),
                open_streams: 2,
            }),
            grew: Condvar::new(),
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_reader(label, stdout, logs.clone())?;
        spawn_reader(label, stderr, logs.clone())?;
        Ok(Process {
            label: label.to_string(),
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            logs,
        })
    }

    /// The label given at spawn time.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its resident set size in bytes (`VmRSS`; 0 once it is gone).
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// The largest resident set size it had so far, in bytes (`VmHWM`; 0 once it is gone).
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// A `kB` field of `/proc/PID/status`, in bytes.
    fn status_bytes(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// The user + system CPU time it used so far (`/proc/PID/stat` fields 14 and 15, in
    /// Linux's fixed 100 Hz `USER_HZ` ticks; zero once it is gone).
    pub fn cpu_time(&self) -> std::time::Duration {
        let (user, system) = self.cpu_times();
        user + system
    }

    /// The user and the system CPU time it used so far, apart (see [`cpu_time`](Self::cpu_time)).
    pub fn cpu_times(&self) -> (std::time::Duration, std::time::Duration) {
        let ticks = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                // The command name (field 2) may hold spaces: count from after its ')'.
                let rest = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some((
                    f.get(11)?.parse::<u64>().ok()?,
                    f.get(12)?.parse::<u64>().ok()?,
                ))
            })
            .unwrap_or((0, 0));
        let ms = |t: u64| std::time::Duration::from_millis(t * 10);
        (ms(ticks.0), ms(ticks.1))
    }

    /// All output lines so far (stdout and stderr interleaved in arrival order).
    pub fn logs(&self) -> Vec<String> {
        self.logs.state.lock().lines.clone()
    }

    /// The number of lines seen so far: pass it to
    /// [`wait_for_log_after`](Self::wait_for_log_after) to only look at later lines.
    pub fn log_cursor(&self) -> usize {
        self.logs.state.lock().lines.len()
    }

    /// Waits until a line containing `needle` has been logged (earlier lines count) and
    /// returns it. Fails on timeout or when the process closes its output first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for_log_after(0, needle, timeout)
    }

    /// Like [`wait_for_log`](Self::wait_for_log), considering only lines at index `cursor`
    /// and later.
    pub fn wait_for_log_after(
        &self,
        cursor: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.logs.state.lock();
        let mut next = cursor;
        loop {
            if let Some(line) = state.lines.iter().skip(next).find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            next = next.max(state.lines.len());
            let why = if state.open_streams == 0 {
                "the process closed its output"
            } else if self.logs.grew.wait_until(&mut state, deadline).timed_out() {
                "timed out"
            } else {
                continue;
            };
            let tail = state.lines.len().saturating_sub(TAIL);
            bail!(
                "[{}] no log line containing {needle:?} ({why}; waited up to {timeout:?}); \
                 last lines:\n{}",
                self.label,
                state.lines[tail..].join("\n")
            );
        }
    }

    /// Sends `signal` unless the process has already exited.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let mut child = self.child.lock();
        // While the child is not reaped its pid cannot be reused, so this signals our child.
        if child.try_wait()?.is_none() {
            kill(Pid::from_raw(self.pid as i32), signal)
                .with_context(|| format!("[{}] send {signal}", self.label))?;
        }
        Ok(())
    }

    /// Asks the process to shut down gracefully (SIGTERM).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Kills the process (SIGKILL); a no-op if it has already exited.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.child
            .lock()
            .kill()
            .with_context(|| format!("[{}] kill", self.label))
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit and returns its status.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.lock().try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(anyhow!("[{}] still running after {timeout:?}", self.label));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A handle the lab keeps so it can kill the child if the test leaks this `Process`.
    pub(crate) fn child_handle(&self) -> Weak<Mutex<Child>> {
        Arc::downgrade(&self.child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("label", &self.label)
            .field("pid", &self.pid)
            .finish()
    }
}

/// SIGKILLs the child (if still running) and reaps it.
pub(crate) fn kill_and_reap(child: &Mutex<Child>) {
    let mut child = child.lock();
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_reader(
    label: &str,
    stream: impl Read + Send + 'static,
    logs: Arc<LogBuffer>,
) -> anyhow::Result<()> {
    let label = label.to_string();
    std::thread::Builder::new()
        .name("log-reader".into())
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        eprintln!("[{label}] {line}");
                        logs.state.lock().lines.push(line);
                        logs.grew.notify_all();
                    }
                }
            }
            logs.state.lock().open_streams -= 1;
            logs.grew.notify_all();
        })?;
    Ok(())
}
