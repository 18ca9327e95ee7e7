//! Fork detection: a generation counter bumped in every forked child.
//!
//! State that must not be shared between a parent and its forked child (the nonce pool, the
//! DEK cache) records the generation it was built under and discards itself when the current
//! generation differs. The counter is bumped by a `pthread_atfork` child handler, which runs
//! for `os.fork()` and every other `fork()` call.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError, TryLockError};

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

/// A mutex that a forked child can always take.
///
/// In a child, a lock that one of the parent's other threads held at the moment of `fork()`
/// stays locked forever: that thread does not exist there. Under the GIL our locks are only
/// taken with the GIL held, so no other thread holds one when Python forks; a free-threaded
/// interpreter (this module declares support) has no such guarantee. So the value lives in a
/// slot stamped with the fork generation, and the first lock in a new generation moves to a
/// fresh slot instead of waiting on the old one. The old slot is never freed (another thread
/// of the child may still be reading its stamp); its value is handed to `abandon` when its lock
/// is free, and left untouched otherwise (a holder may have been mid-update).
pub struct ForkSafeMutex<T> {
    slot: AtomicPtr<Slot<T>>,
}

struct Slot<T> {
    generation: u64,
    lock: Mutex<T>,
}

impl<T> ForkSafeMutex<T> {
    /// An empty mutex; its value is made by the first [`ForkSafeMutex::lock`].
    pub const fn new() -> Self {
        ForkSafeMutex {
            slot: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Locks the value of the current fork generation, first making it with `fresh` when
    /// there is none yet (the first use, or the first in a forked child). Returns the guard
    /// and whether a value was made. A poisoned lock is taken as it is: callers keep their
    /// values consistent across a panic.
    pub fn lock(
        &self,
        fresh: impl FnOnce() -> T,
        abandon: impl FnOnce(&mut T),
    ) -> (MutexGuard<'_, T>, bool) {
        let generation = generation();
        let mut fresh = Some(fresh);
        let mut abandon = Some(abandon);
        let mut made = false;
        loop {
            let current = self.slot.load(Ordering::Acquire);
            // SAFETY: a published slot is never freed before `self` is dropped (see Drop).
            if let Some(slot) = unsafe { current.as_ref() } {
                if slot.generation == generation {
                    let guard = slot.lock.lock().unwrap_or_else(PoisonError::into_inner);
                    return (guard, made);
                }
            }
            let Some(make) = fresh.take() else {
                // Another thread of this generation published its slot first; use that one.
                continue;
            };
            let new = Box::into_raw(Box::new(Slot {
                generation,
                lock: Mutex::new(make()),
            }));
            match self
                .slot
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    made = true;
                    // SAFETY: as above; the old slot stays allocated (leaked) from here on.
                    if let Some(old) = unsafe { current.as_ref() } {
                        match old.lock.try_lock() {
                            Ok(mut g) => (abandon.take().expect("abandoned once"))(&mut g),
                            Err(TryLockError::Poisoned(p)) => {
                                (abandon.take().expect("abandoned once"))(&mut p.into_inner());
                            }
                            // Held by a thread of the parent: never touched again.
                            Err(TryLockError::WouldBlock) => {}
                        }
                    }
                }
                Err(_) => {
                    // SAFETY: `new` was never published, so this thread owns it.
                    drop(unsafe { Box::from_raw(new) });
                }
            }
        }
    }
}

impl<T> std::fmt::Debug for ForkSafeMutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value may hold keys: never printed.
        f.debug_struct("ForkSafeMutex").finish_non_exhaustive()
    }
}

impl<T> Default for ForkSafeMutex<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for ForkSafeMutex<T> {
    fn drop(&mut self) {
        let current = *self.slot.get_mut();
        if !current.is_null() {
            // SAFETY: `&mut self` means no guard or reader is left; the slot was made by
            // `Box::into_raw` in `lock`. Slots of earlier generations were leaked on purpose.
            drop(unsafe { Box::from_raw(current) });
        }
    }
}

// SAFETY: the slot pointer is only an owned `Box<Slot<T>>` shared as `&Slot<T>`, and
// `Slot<T>` is `Send`/`Sync` exactly when `Mutex<T>` is, that is when `T: Send`.
unsafe impl<T: Send> Send for ForkSafeMutex<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for ForkSafeMutex<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    /// Runs `child` in a forked child (killed after 5 s, so a hang fails instead of blocking)
    /// and returns whether it exited with 0.
    fn in_child(child: impl FnOnce() -> bool) -> bool {
        // SAFETY: the child only runs `child` (locks, allocation: glibc's malloc is fork-safe)
        // and leaves with `_exit`, never unwinding into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: plain libc calls in the child.
            unsafe {
                libc::alarm(5);
                libc::_exit(if child() { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    #[test]
    fn makes_the_value_once_per_generation() {
        let m: ForkSafeMutex<Vec<u8>> = ForkSafeMutex::new();
        let (mut g, made) = m.lock(|| vec![1], |_| unreachable!());
        assert!(made);
        g.push(2);
        drop(g);
        let (g, made) = m.lock(|| vec![9], |_| unreachable!());
        assert!(!made);
        assert_eq!(*g, vec![1, 2]);
    }

    #[test]
    fn a_child_never_waits_on_a_lock_a_parent_thread_held() {
        static M: ForkSafeMutex<Vec<u8>> = ForkSafeMutex::new();
        drop(M.lock(|| vec![1], |_| {}));
        let (held_tx, held_rx) = channel();
        let (release_tx, release_rx) = channel::<()>();
        let holder = std::thread::spawn(move || {
            let (mut g, _) = M.lock(Vec::new, |_| {});
            g.push(2);
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            g.push(3);
        });
        held_rx.recv().unwrap();
        // The holder is mid-update at fork time: the child gets a fresh value and never
        // touches (abandons) the held one.
        let ok = in_child(|| {
            let mut abandoned = false;
            let (g, made) = M.lock(|| vec![7], |_| abandoned = true);
            made && *g == vec![7] && !abandoned
        });
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(ok, "the child hung or saw the parent's value");
        // The parent's value is untouched by the child.
        assert_eq!(*M.lock(Vec::new, |_| {}).0, vec![1, 2, 3]);
    }

    #[test]
    fn a_child_abandons_a_free_parent_value() {
        let m: ForkSafeMutex<Vec<u8>> = ForkSafeMutex::new();
        drop(m.lock(|| vec![1, 2], |_| {}));
        let ok = in_child(|| {
            let mut seen = Vec::new();
            let (g, made) = m.lock(Vec::new, |old| seen = std::mem::take(old));
            made && g.is_empty() && seen == vec![1, 2]
        });
        assert!(ok);
        assert_eq!(*m.lock(Vec::new, |_| {}).0, vec![1, 2]);
    }
}
