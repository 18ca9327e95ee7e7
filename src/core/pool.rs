//! A small pool of persistent worker threads, to split one call's work across cores.
//!
//! Spawning a thread per call costs tens of microseconds on a VM (a stack mapping and its
//! first-touch page faults, then the clone), as much as sealing a few hundred KiB. Waking a
//! parked worker costs as much again on this kind of VM (the idle vCPU must be woken by the
//! hypervisor), so the work is not split up front: the caller starts on it at once and
//! workers claim what is left when they arrive, one task at a time. A worker that arrives
//! after the last task was claimed never touches the call. Workers are started on first use
//! and kept; after a job a worker polls for the next one briefly before parking, so runs
//! issued back to back do not pay the wake-up each time.
//!
//! Fork: a child process inherits the pool's bookkeeping but none of its threads, so the
//! registry is kept per fork generation and a child builds its own (the parent's channel ends
//! are forgotten, never joined), without waiting on a lock a parent's thread held.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::core::fork::ForkSafeMutex;

/// Upper bound on the workers (the Python layer accepts 1..=64 threads per call).
const MAX_WORKERS: usize = 63;

/// How long an idle worker polls for its next job before parking.
const WORKER_SPIN: Duration = Duration::from_micros(50);

/// How long the caller spins for workers still on their last task before parking: about a
/// 1 MiB segment's seal, shorter than a park and wake-up round trip here.
const CALLER_SPIN: Duration = Duration::from_micros(200);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Senders to this process's workers, per fork generation (see `ForkSafeMutex`).
static POOL: ForkSafeMutex<Vec<Sender<Job>>> = ForkSafeMutex::new();

/// The caller's task, as a pointer: it is borrowed from the caller's frame, and a worker may
/// hold this after the call returned (it then never dereferences it, see [`Call::enter`]).
#[derive(Clone, Copy)]
struct TaskPtr(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync`, and it is only dereferenced while the caller waits in `run`.
unsafe impl Send for TaskPtr {}
// SAFETY: as above; sharing the pointer only shares `&` access to a `Sync` pointee.
unsafe impl Sync for TaskPtr {}

/// One call of [`run`], shared by the caller and the workers it asked for.
struct Call {
    count: usize,
    /// The next task index to claim.
    next: AtomicUsize,
    /// Workers inside [`Call::enter`].
    active: AtomicUsize,
    /// Set by the caller once every task is claimed: workers arriving later stay out.
    closed: AtomicBool,
    panicked: AtomicBool,
    caller: Thread,
    task: TaskPtr,
}

impl Call {
    /// Claims and runs tasks until none is left.
    fn work(&self, task: &(dyn Fn(usize) + Sync)) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.count {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A worker's share: nothing if the caller already closed the call.
    fn enter(&self) {
        // SeqCst pairs with `close`: either this worker sees `closed` and stays out, or the
        // caller sees it active and waits for it to leave.
        self.active.fetch_add(1, Ordering::SeqCst);
        if !self.closed.load(Ordering::SeqCst) {
            // SAFETY: the call is open, so the caller is still in `run` and the task alive.
            self.work(unsafe { &*self.task.0 });
        }
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 && self.closed.load(Ordering::SeqCst) {
            self.caller.unpark();
        }
    }

    /// Called by the caller once its own work is done: waits for workers still inside.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while self.active.load(Ordering::SeqCst) != 0 {
            if start.elapsed() < CALLER_SPIN {
                std::hint::spin_loop();
            } else {
                // Woken by the last worker to leave; a spurious wake-up just loops.
                thread::park();
            }
        }
    }
}

/// Runs a worker's jobs. Only workers that have a core of their own poll before parking: on
/// a machine with fewer cores than workers, polling would take time from the busy ones.
fn worker_loop(rx: &Receiver<Job>, spin: bool) {
    loop {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) if !spin => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(TryRecvError::Empty) => {
                let start = Instant::now();
                let mut polled = None;
                while start.elapsed() < WORKER_SPIN {
                    match rx.try_recv() {
                        Ok(job) => {
                            polled = Some(job);
                            break;
                        }
                        Err(TryRecvError::Disconnected) => return,
                        Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    }
                }
                match polled {
                    Some(job) => job,
                    None => match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                }
            }
        };
        job();
    }
}

/// Senders to `n` workers of this process, starting workers as needed.
fn senders(n: usize) -> Vec<Sender<Job>> {
    // In a forked child the parent's senders lead to threads that do not exist here: they are
    // forgotten, never dropped or joined.
    let (mut senders, _) = POOL.lock(Vec::new, |stale| std::mem::forget(std::mem::take(stale)));
    while senders.len() < n.min(MAX_WORKERS) {
        let (tx, rx) = channel::<Job>();
        // The caller takes one core; workers beyond the others never poll. (Asked only when
        // spawning: the answer reads cgroup files, tens of microseconds.)
        let spare_cores = thread::available_parallelism().map_or(1, |c| c.get() - 1);
        let spin = senders.len() < spare_cores;
        let spawned = thread::Builder::new()
            .name(format!("glc-seal-{}", senders.len()))
            .spawn(move || worker_loop(&rx, spin));
        if spawned.is_err() {
            break; // out of threads: the caller and the workers it has share the tasks
        }
        senders.push(tx);
    }
    senders.iter().take(n).cloned().collect()
}

/// Runs `task(0)` .. `task(count - 1)` on the calling thread and up to `threads - 1` pool
/// workers, each claiming the next unclaimed index, and returns when all have finished. A
/// panic in any task is re-raised here (as a new panic), after every task has finished. A
/// task must not call `run` itself: it could wait on its own worker. Concurrent callers share
/// the workers and queue behind each other.
pub fn run<F>(count: usize, threads: usize, task: &F)
where
    F: Fn(usize) + Sync,
{
    let helpers = threads.min(count).saturating_sub(1);
    let dyn_task: &(dyn Fn(usize) + Sync) = task;
    let erased: *const (dyn Fn(usize) + Sync) = dyn_task;
    // SAFETY: only the lifetime bound of the trait object is erased (both sides are fat
    // pointers of the same trait); `Call::close` below keeps this frame alive until no worker
    // can dereference it any more.
    let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(erased) };
    let call = Arc::new(Call {
        count,
        next: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        panicked: AtomicBool::new(false),
        caller: thread::current(),
        task: TaskPtr(erased),
    });
    if helpers > 0 {
        for tx in senders(helpers) {
            let call = Arc::clone(&call);
            // A worker whose channel is gone just leaves the tasks to the others.
            let _ = tx.send(Box::new(move || call.enter()));
        }
    }
    call.work(dyn_task);
    call.close();
    assert!(
        !call.panicked.load(Ordering::Relaxed),
        "a pool task panicked"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn runs_every_task_once() {
        for count in [0, 1, 2, 3, 8, 70] {
            let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            run(count, 3, &|i| {
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
            run(4, 2, &|i| {
                assert!(i != 2, "boom");
                done.fetch_add(1, Ordering::SeqCst);
            });
        }));
        assert!(r.is_err());
        assert_eq!(done.load(Ordering::SeqCst), 3);
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        run(3, 3, &|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn more_threads_than_tasks_and_concurrent_callers() {
        // Callers on several threads at once, with tasks short enough that workers often
        // arrive after the caller has closed the call: every task still runs exactly once and
        // no call returns while a worker is inside it (the counters are on the caller's stack).
        let callers: Vec<_> = (0..4)
            .map(|c| {
                thread::spawn(move || {
                    for round in 0..300 {
                        let count = (round + c) % 5;
                        let hits: Vec<AtomicUsize> =
                            (0..count).map(|_| AtomicUsize::new(0)).collect();
                        run(count, 1 + (round % 4), &|i| {
                            hits[i].fetch_add(1, Ordering::SeqCst);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1));
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().expect("caller thread");
        }
    }

    #[test]
    fn a_late_worker_takes_the_tasks_left() {
        // The caller's first task outlasts a worker's wake-up, so the worker claims the rest.
        let seen = Mutex::new(Vec::new());
        run(4, 2, &|i| {
            if i == 0 {
                thread::sleep(Duration::from_millis(50));
            }
            seen.lock().unwrap().push((i, thread::current().id()));
        });
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 4);
        let me = thread::current().id();
        assert!(
            seen.iter().any(|&(_, t)| t != me),
            "no worker took a task: {seen:?}"
        );
    }
}
