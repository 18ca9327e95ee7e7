//! A small pool of persistent worker threads, to split one call's segments across cores.
//!
//! Spawning a thread per call costs tens of microseconds on a VM (a stack mapping and its
//! first-touch page faults, then the clone), as much as sealing a few hundred KiB; a parked
//! worker wakes in a few microseconds. Workers are started on first use and kept.
//!
//! Fork: a child process inherits the pool's bookkeeping but none of its threads, so the pool
//! records the fork generation it was built under and a child builds its own (the parent's
//! channel ends are forgotten, never joined).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;

use crate::core::fork;

/// Upper bound on the workers (the Python layer accepts 1..=64 threads per call).
const MAX_WORKERS: usize = 63;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Workers {
    generation: u64,
    senders: Vec<Sender<Job>>,
}

static POOL: Mutex<Option<Workers>> = Mutex::new(None);

/// Counts the tasks still running and whether one of them panicked.
struct Latch {
    state: Mutex<(usize, bool)>,
    done: Condvar,
}

impl Latch {
    fn finish(&self, panicked: bool) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 -= 1;
        s.1 |= panicked;
        if s.0 == 0 {
            self.done.notify_all();
        }
    }

    /// Blocks until every task finished; returns whether one panicked.
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while s.0 > 0 {
            s = self.done.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.1
    }
}

/// Senders to `n` workers of this process, starting workers as needed.
fn senders(n: usize) -> Vec<Sender<Job>> {
    let generation = fork::generation();
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.as_ref().is_some_and(|w| w.generation != generation) {
        // Inherited from the parent across fork(): its threads do not exist here.
        if let Some(stale) = pool.take() {
            std::mem::forget(stale);
        }
    }
    let workers = pool.get_or_insert_with(|| Workers {
        generation,
        senders: Vec::new(),
    });
    while workers.senders.len() < n.min(MAX_WORKERS) {
        let (tx, rx) = channel::<Job>();
        let spawned = thread::Builder::new()
            .name(format!("glc-seal-{}", workers.senders.len()))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if spawned.is_err() {
            break; // out of threads: the caller runs the remaining tasks itself
        }
        workers.senders.push(tx);
    }
    workers.senders.iter().take(n).cloned().collect()
}

/// Runs `task(0)` .. `task(count - 1)`: task 0 on the calling thread, the others on pool
/// workers, and returns when all have finished. A panic in any task is re-raised here, after
/// every task has finished. A task must not call `run` itself: it could wait on its own
/// worker. Concurrent callers share the workers and queue behind each other.
pub fn run<F>(count: usize, task: &F)
where
    F: Fn(usize) + Sync,
{
    if count <= 1 {
        if count == 1 {
            task(0);
        }
        return;
    }
    let latch = Arc::new(Latch {
        state: Mutex::new((count - 1, false)),
        done: Condvar::new(),
    });
    let dyn_task: &(dyn Fn(usize) + Sync) = task;
    // SAFETY: this function does not return, nor unwind, before the latch says every task
    // handed to a worker has finished (the caller's own tasks run under `catch_unwind`), so
    // the borrow outlives every use; the channel's job type demands `'static`.
    let shared: &'static (dyn Fn(usize) + Sync) = unsafe {
        std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(dyn_task)
    };
    let senders = senders(count - 1);
    let mut inline = Vec::new();
    for i in 1..count {
        let sent = senders.get(i - 1).is_some_and(|tx| {
            let latch = Arc::clone(&latch);
            tx.send(Box::new(move || {
                let panicked = catch_unwind(AssertUnwindSafe(|| shared(i))).is_err();
                latch.finish(panicked);
            }))
            .is_ok()
        });
        if !sent {
            inline.push(i);
        }
    }
    let own = catch_unwind(AssertUnwindSafe(|| {
        task(0);
        for &i in &inline {
            task(i);
        }
    }));
    for _ in &inline {
        latch.finish(false);
    }
    let worker_panicked = latch.wait();
    if let Err(payload) = own {
        resume_unwind(payload);
    }
    assert!(!worker_panicked, "a pool task panicked");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_task_once() {
        for count in [0, 1, 2, 3, 8, 70] {
            let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            run(count, &|i| {
                hits[i].fetch_add(1, Ordering::SeqCst);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::SeqCst) == 1),
                "count {count}"
            );
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_after_all_tasks() {
        let done = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(4, &|i| {
                assert!(i != 2, "boom");
                done.fetch_add(1, Ordering::SeqCst);
            });
        }));
        assert!(r.is_err());
        assert_eq!(done.load(Ordering::SeqCst), 3);
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        run(3, &|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }
}
