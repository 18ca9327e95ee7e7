//! Fork detection: a generation counter bumped in every forked child.
//!
//! State that must not be shared between a parent and its forked child (the nonce pool, the
//! DEK cache) records the generation it was built under and discards itself when the current
//! generation differs. The counter is bumped by a `pthread_atfork` child handler, which runs
//! for `os.fork()` and every other `fork()` call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The current fork generation; registers the at-fork handler on first use.
pub fn generation() -> u64 {
    REGISTER.call_once(|| {
        // SAFETY: the handler only performs an atomic increment, which is async-signal-safe
        // and valid in a freshly forked child. A non-zero return (memory exhaustion) only
        // means the handler is missing; AWS-LC's own fork detection still guards its DRBG.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
    FORK_GENERATION.load(Ordering::Acquire)
}
