//! Thread capabilities, for tests that must see what ztun does without a capability (the
//! kernel checks the calling thread's effective set, so one test thread can lose a
//! capability without touching the rest of the process).

use std::io;

/// `CAP_NET_ADMIN`.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`.
pub const CAP_NET_RAW: u32 = 13;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes `caps` from the calling thread's effective set (they stay permitted).
pub fn drop_effective(caps: &[u32]) -> io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` records (version 3) for the calling thread (pid 0)
    // into `data`, which holds exactly two; `header` is a valid version-3 header.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    for &cap in caps {
        let word = (cap / 32) as usize;
        if let Some(d) = data.get_mut(word) {
            d.effective &= !(1 << (cap % 32));
        }
    }
    // SAFETY: capset reads the header and two `Data` records; both are valid and sized as
    // version 3 requires. It changes only the calling thread's capabilities.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
