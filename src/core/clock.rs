//! The monotonic clock that DEK caches and their fences read, and a manual one for tests.
//!
//! A cache reads the time on every lookup, so [`Clock::System`] must stay as cheap as a bare
//! read of the coarse clock: the enum adds one well-predicted branch and no indirection. A
//! [`Clock::Manual`] clock only moves when told to, so a test can step past a TTL or a fence
//! deadline without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Monotonic time from the coarse clock (a few ns to read, millisecond resolution).
///
/// The precise clock costs tens of nanoseconds under KVM, a measurable share of a 64-byte
/// seal; a TTL measured in minutes does not need better than millisecond resolution.
#[inline]
pub fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A reading of [`now`] in nanoseconds (saturating; a u64 of nanoseconds lasts 584 years).
#[inline]
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The system monotonic clock the caches and their fences use, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    duration_ns(now())
}

/// Where a cache reads the time from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The coarse system monotonic clock ([`now`]).
    #[default]
    System,
    /// A shared counter of nanoseconds that moves only through [`ManualClock`].
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The current reading.
    #[inline]
    pub fn now(&self) -> Duration {
        match self {
            Clock::System => now(),
            Clock::Manual(ns) => Duration::from_nanos(ns.load(Ordering::Acquire)),
        }
    }

    /// The current reading in nanoseconds.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        duration_ns(self.now())
    }
}

/// A clock that stands still until advanced: a test steps it past a TTL or a fence deadline
/// instead of sleeping. Cloning shares the reading, so every clone (and every cache built on
/// [`ManualClock::clock`]) sees the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    ns: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `start_ns` nanoseconds.
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            ns: Arc::new(AtomicU64::new(start_ns)),
        }
    }

    /// The current reading in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::Acquire)
    }

    /// Moves the reading forward by `by` (saturating at `u64::MAX` nanoseconds).
    pub fn advance(&self, by: Duration) {
        let step = duration_ns(by);
        // fetch_update with a saturating add: concurrent advances all count, none wraps.
        let _ = self
            .ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(step))
            });
    }

    /// Sets the reading to `ns` nanoseconds, in either direction.
    pub fn set_ns(&self, ns: u64) {
        self.ns.store(ns, Ordering::Release);
    }

    /// A [`Clock`] that reads this clock.
    pub fn clock(&self) -> Clock {
        Clock::Manual(Arc::clone(&self.ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_moves_forward() {
        let a = Clock::System.now_ns();
        std::thread::sleep(Duration::from_millis(20));
        let b = Clock::System.now_ns();
        assert!(b > a, "{b} <= {a}");
        assert!(monotonic_ns() >= b);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let m = ManualClock::new(5);
        let c = m.clock();
        assert_eq!(c.now_ns(), 5);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now_ns(), 5);
        m.advance(Duration::from_millis(1500));
        assert_eq!(c.now_ns(), 1_500_000_005);
        assert_eq!(
            m.clone().now_ns(),
            1_500_000_005,
            "clones share the reading"
        );
        m.set_ns(7);
        assert_eq!(c.now(), Duration::from_nanos(7));
        m.set_ns(u64::MAX - 1);
        m.advance(Duration::from_secs(1));
        assert_eq!(m.now_ns(), u64::MAX, "advance saturates");
    }

    #[test]
    fn concurrent_advances_all_count() {
        let m = ManualClock::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.advance(Duration::from_nanos(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.now_ns(), 12_000);
    }
}
