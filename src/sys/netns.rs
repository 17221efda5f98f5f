//! Network namespaces: hold one open, and run a closure with the calling thread inside it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

thread_local! {
    /// The namespace a thread lives in, for [`Netns::run`] to return to. Only threads that
    /// stay in one namespace for life call `run` (worker threads; test threads enter their
    /// namespace once, before anything else).
    static HOME: std::cell::OnceCell<Netns> = const { std::cell::OnceCell::new() };
}

/// An open network namespace, identified by the (device, inode) of its nsfs file.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    id: NetnsId,
}

/// Identity of a network namespace: two fds naming the same namespace have the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NetnsId {
    /// Device of the nsfs inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl Netns {
    /// Takes ownership of `fd` after checking that it really is a network namespace.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        // NS_GET_NSTYPE = _IO(0xb7, 0x3): the namespace type of an nsfs file descriptor.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: `fd` is an open descriptor we own; this ioctl takes no argument and only
        // returns an integer (or fails with ENOTTY/EINVAL for non-namespace files).
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file descriptor is not a network namespace",
            ));
        }
        let meta = File::from(fd.try_clone()?).metadata()?;
        Ok(Netns {
            fd,
            id: NetnsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
        })
    }

    /// Opens a namespace by path (e.g. `/var/run/netns/x` or `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> io::Result<Self> {
        Netns::from_fd(File::open(path)?.into())
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> io::Result<Self> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Stable identity of the namespace.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Runs `f` with the calling thread inside this namespace, then moves the thread back.
    ///
    /// Only sockets *created* inside `f` belong to the namespace; once created they can be
    /// used from any thread. `f` must not block or await.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        HOME.with(|home| {
            // The thread's own namespace, opened on first use: `run` always returns the
            // thread to it, so it stays valid (and saves five syscalls per connection).
            let home = match home.get() {
                Some(h) => h,
                None => {
                    let _ = home.set(Netns::current()?);
                    home.get()
                        .ok_or_else(|| io::Error::other("thread namespace"))?
                }
            };
            if home.id == self.id {
                return Ok(f());
            }
            setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let out = f();
            // Invariant: a worker thread must never stay in a pod's namespace, or sockets of
            // unrelated tenants would be created there. If we cannot return, stop the process.
            if let Err(e) = setns(home.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                eprintln!("fatal: cannot return thread to its network namespace: {e}");
                std::process::abort();
            }
            Ok(out)
        })
    }
}
