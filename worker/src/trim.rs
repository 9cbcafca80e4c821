//! Giving freed heap back to the OS after workers go away.
//!
//! Every worker holds connections, buffers and tasks spread over the runtime's
//! threads, so glibc's allocator serves them from several arenas. When a burst
//! of workers ends (a job restart, a StartWorker storm), those arenas keep the
//! freed memory: a 2,000-worker storm left the pool at 122 MB resident instead
//! of the ~8 MB it started with. `malloc_trim` hands the free pages of every
//! arena back. It walks the heap, so it runs once things have settled: on the
//! blocking pool, a short while after the last release of a burst.
//!
//! The other half: while workers run, freed heap is kept. By default glibc
//! hands the free top of each arena back after every large free and serves
//! buffers of a megabyte or more from fresh mappings, so a stream of 1 MB
//! chunks faults in and zeroes new pages over and over. [`keep_freed_heap`]
//! raises both thresholds; the trim after a release still returns the pages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after a release the trim runs; releases within it share one trim.
const SETTLE: Duration = Duration::from_secs(2);

static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// Free heap at the top of an arena kept for reuse, up to this much.
const TRIM_THRESHOLD: i32 = 64 << 20;
/// Allocations from this size up get mappings of their own (and hand them
/// back on free); smaller ones, such as receive buffers, reuse arena memory.
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Keeps freed heap for reuse while workers run (called once at start-up).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_heap() {
    // SAFETY: mallopt only sets allocator parameters, under the allocator's
    // own lock; a refused value leaves glibc's default, which is still correct.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Other C libraries: their allocators decide alone.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_heap() {}

/// Called when a worker's slot is freed: schedules one trim for the burst.
pub fn after_release() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    runtime.spawn(async {
        tokio::time::sleep(SETTLE).await;
        // Cleared first: a release during the trim schedules the next one.
        SCHEDULED.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

/// Returns free heap pages to the OS; whether any were is not needed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only inspects and shrinks the allocator's own free
    // lists; it takes the arena locks itself and is safe to call any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries have no `malloc_trim`; their allocators decide alone.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
