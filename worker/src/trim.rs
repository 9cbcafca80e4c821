//! Giving freed heap back to the OS after workers go away.
//!
//! Every worker holds connections, buffers and tasks spread over the runtime's
//! threads, so glibc's allocator serves them from several arenas. When a burst
//! of workers ends (a job restart, a StartWorker storm), those arenas keep the
//! freed memory: a 2,000-worker storm left the pool at 122 MB resident instead
//! of the ~8 MB it started with. `malloc_trim` hands the free pages of every
//! arena back. It walks the heap, so it runs once things have settled: on the
//! blocking pool, a short while after the last release of a burst.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after a release the trim runs; releases within it share one trim.
const SETTLE: Duration = Duration::from_secs(2);

static SCHEDULED: AtomicBool = AtomicBool::new(false);

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
