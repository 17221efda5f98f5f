//! Heap accounting: a global allocator that counts the bytes live in the heap and their peak
//! (for benchmarks and tests that measure what a structure holds, exactly and repeatably,
//! where RSS would depend on the allocator's caching), and returning freed heap to the system.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting. Install with `#[global_allocator]` in a test or bench
/// binary (the library's unit tests have it); ztun itself does not use it.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Bytes this thread allocated minus bytes it freed. Const-initialized and without a
    /// destructor, so the allocator can use it without allocating.
    static THREAD_NET: Cell<isize> = const { Cell::new(0) };
}

impl CountingAlloc {
    /// Bytes allocated and not freed.
    pub fn live() -> usize {
        LIVE.load(Relaxed)
    }

    /// The highest [`live`](Self::live) since the last [`reset_peak`](Self::reset_peak).
    pub fn peak() -> usize {
        PEAK.load(Relaxed)
    }

    /// Bytes the calling thread allocated minus bytes it freed, so far: what a test running
    /// on one thread (a current-thread runtime) holds, whatever other threads do meanwhile.
    pub fn thread_net() -> isize {
        THREAD_NET.try_with(Cell::get).unwrap_or(0)
    }

    /// Starts a new peak at the current live bytes.
    pub fn reset_peak() {
        PEAK.store(LIVE.load(Relaxed), Relaxed);
    }

    fn added(size: usize) {
        let live = LIVE.fetch_add(size, Relaxed) + size;
        PEAK.fetch_max(live, Relaxed);
        Self::thread_add(size as isize);
    }

    fn removed(size: usize) {
        LIVE.fetch_sub(size, Relaxed);
        Self::thread_add(-(size as isize));
    }

    fn thread_add(n: isize) {
        // Fails only while the thread's locals are torn down: that block goes uncounted.
        let _ = THREAD_NET.try_with(|t| t.set(t.get() + n));
    }
}

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged, so the
// caller's obligations are `System`'s; the counters are plain atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        Self::removed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::removed(layout.size());
            Self::added(new_size);
        }
        p
    }
}

/// Returns the heap's free pages to the system (glibc keeps them otherwise): called after a
/// large state update, whose decoded messages and replaced values leave most of the heap's
/// growth free but still resident. A no-op with other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointer from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Freed heap glibc keeps for reuse instead of handing it back (`M_TRIM_THRESHOLD`).
pub const RETAINED_FREE_HEAP: usize = 4 << 20;
/// Allocations at least this large get pages of their own from the kernel, the rest come
/// from the heap (`M_MMAP_THRESHOLD`): above the largest buffer the data path allocates per
/// chunk (a 1 MiB HTTP/2 DATA frame, the largest ztun accepts, plus its head).
pub const OWN_PAGES_FROM: usize = 2 << 20;

/// Keeps freed heap memory for reuse during bulk transfers. glibc's defaults hand memory
/// back to the kernel as soon as more than 128 KiB is free at the top of a heap and serve
/// allocations from 128 KiB up (raised only as big blocks come and go) with pages of their
/// own; the data path's chunks (reads of up to 256 KiB, HTTP/2 frames of as much) then
/// cycle through the kernel, and every chunk is copied into freshly faulted, zeroed pages.
/// After this, up to [`RETAINED_FREE_HEAP`] of free heap stays resident per arena after a
/// burst (an explicit [`release_free_memory`] still returns it). A no-op with other C
/// libraries.
pub fn retain_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocator parameters; it takes no pointer from us.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, RETAINED_FREE_HEAP as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM as libc::c_int);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (bytes free in the heaps, bytes in blocks with pages of their own), over all arenas.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn heap() -> (usize, usize) {
        // SAFETY: mallinfo2 only reads glibc's own arenas and returns a plain struct.
        let m = unsafe { libc::mallinfo2() };
        (m.fordblks, m.hblkhd)
    }

    /// A chunk as large as the data path's biggest comes from the heap, and once freed stays
    /// there for the next one, instead of a mapping of its own that is unmapped when freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_freed_data_path_chunk_stays_in_the_heap() {
        retain_freed_heap();
        const CHUNK: usize = 1 << 20;
        let (_, mapped_before) = heap();
        let chunk = std::hint::black_box(vec![1u8; CHUNK]);
        let (free_before, mapped_during) = heap();
        assert_eq!(
            mapped_during, mapped_before,
            "the chunk got pages of its own"
        );
        drop(chunk);
        let (free_after, _) = heap();
        assert!(
            free_after >= free_before + CHUNK,
            "freed chunk not kept: {free_before} B free before, {free_after} B after"
        );
    }
}
