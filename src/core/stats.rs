//! Process-wide hot-path counters kept in atomics.
//!
//! Prometheus reads them at scrape time through a custom collector, so counting an operation
//! costs one relaxed atomic add instead of a Python call: a metric must not cost more than 10%
//! of the operation it counts.

use crate::core::fork::ForkSafeMutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the process-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Successful seals.
    pub seals: u64,
    /// Plaintext bytes sealed.
    pub sealed_bytes: u64,
    /// Successful opens.
    pub opens: u64,
    /// Plaintext bytes opened.
    pub opened_bytes: u64,
    /// Opens rejected because authentication failed.
    pub open_auth_failures: u64,
    /// Opens rejected because the envelope was malformed or unsupported.
    pub open_format_failures: u64,
    /// Seals refused because a key reached its usage limit.
    pub usage_refusals: u64,
}

static SEALS: AtomicU64 = AtomicU64::new(0);
static SEALED_BYTES: AtomicU64 = AtomicU64::new(0);
static OPENS: AtomicU64 = AtomicU64::new(0);
static OPENED_BYTES: AtomicU64 = AtomicU64::new(0);
static OPEN_AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
static OPEN_FORMAT_FAILURES: AtomicU64 = AtomicU64::new(0);
static USAGE_REFUSALS: AtomicU64 = AtomicU64::new(0);
static LIVE_DATA_KEYS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn data_key_created() {
    LIVE_DATA_KEYS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn data_key_dropped() {
    LIVE_DATA_KEYS.fetch_sub(1, Ordering::Relaxed);
}

/// Data keys alive in this process (created and not yet dropped, hence not yet zeroized).
pub fn live_data_keys() -> u64 {
    LIVE_DATA_KEYS.load(Ordering::Relaxed)
}

pub(crate) fn record_seal(messages: u64, bytes: u64) {
    SEALS.fetch_add(messages, Ordering::Relaxed);
    SEALED_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

pub(crate) fn record_open(messages: u64, bytes: u64) {
    OPENS.fetch_add(messages, Ordering::Relaxed);
    OPENED_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

pub(crate) fn record_open_failure(err: &crate::core::Error) {
    match err {
        crate::core::Error::Authentication => {
            OPEN_AUTH_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            OPEN_FORMAT_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(crate) fn record_usage_refusal() {
    USAGE_REFUSALS.fetch_add(1, Ordering::Relaxed);
}

/// Reads every counter (each read is atomic; the set is not a single transaction).
pub fn snapshot() -> Snapshot {
    Snapshot {
        seals: SEALS.load(Ordering::Relaxed),
        sealed_bytes: SEALED_BYTES.load(Ordering::Relaxed),
        opens: OPENS.load(Ordering::Relaxed),
        opened_bytes: OPENED_BYTES.load(Ordering::Relaxed),
        open_auth_failures: OPEN_AUTH_FAILURES.load(Ordering::Relaxed),
        open_format_failures: OPEN_FORMAT_FAILURES.load(Ordering::Relaxed),
        usage_refusals: USAGE_REFUSALS.load(Ordering::Relaxed),
    }
}

/// Running totals of operations and bytes per label (for example per data class).
///
/// Cache entries fold their counts in when they are dropped, so totals stay monotonic when
/// entries are evicted; a snapshot adds the counts of the entries still alive.
///
/// Per fork generation, like the caches they count: a forked child starts from zero.
#[derive(Debug, Default)]
pub struct LabelTotals {
    map: ForkSafeMutex<std::collections::HashMap<std::sync::Arc<str>, (u64, u64)>>,
}

impl LabelTotals {
    /// Adds `ops` operations over `bytes` bytes to `label`.
    pub fn add(&self, label: &std::sync::Arc<str>, ops: u64, bytes: u64) {
        if ops == 0 {
            return;
        }
        let (mut map, _) = self.map.lock(Default::default, |_| {});
        let e = map.entry(std::sync::Arc::clone(label)).or_insert((0, 0));
        e.0 += ops;
        e.1 += bytes;
    }

    /// Totals so far plus the given live `(label, ops, bytes)` counts, per label.
    pub fn snapshot<'a>(
        &self,
        live: impl IntoIterator<Item = (&'a str, u64, u64)>,
    ) -> std::collections::HashMap<String, (u64, u64)> {
        let mut out: std::collections::HashMap<String, (u64, u64)> = self
            .map
            .lock(Default::default, |_| {})
            .0
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        for (label, ops, bytes) in live {
            let e = out.entry(label.to_string()).or_insert((0, 0));
            e.0 += ops;
            e.1 += bytes;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn totals_and_live_counts_add_up() {
        let totals = LabelTotals::default();
        let pii: Arc<str> = Arc::from("pii");
        totals.add(&pii, 2, 15);
        totals.add(&pii, 0, 0);
        assert_eq!(
            totals.snapshot([("pii", 1, 1), ("secret", 4, 4)])["pii"],
            (3, 16)
        );
        assert_eq!(totals.snapshot([])["pii"], (2, 15));
        assert!(!totals.snapshot([]).contains_key("secret"));
    }
}

/// Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
pub const LATENCY_BUCKETS: [f64; 14] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 1e-1, 1.0,
];

/// Per-thread sampling counters available to histograms (more histograms share slots).
const SLOTS: usize = 8;
static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);

/// A latency histogram that times one call in `2^shift`, in atomics.
///
/// Reading the clock twice costs about as much as a 64-byte seal under KVM, so timing every
/// call would break the rule that a metric costs at most 10% of what it measures. Sampling
/// keeps the distribution while the cost per untimed call is one relaxed atomic add.
#[derive(Debug)]
pub struct SampledHistogram {
    mask: u64,
    slot: usize,
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl SampledHistogram {
    /// Times one call in `2^shift`.
    pub fn new(shift: u32) -> Self {
        SampledHistogram {
            slot: NEXT_SLOT.fetch_add(1, Ordering::Relaxed) as usize % SLOTS,
            mask: (1u64 << shift.min(20)) - 1,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Starts timing if this call is sampled.
    ///
    /// The sampling counter is per thread (a plain increment): a shared atomic here would be
    /// one more contended cache line on every call.
    pub fn start(&self) -> Option<std::time::Instant> {
        thread_local! {
            // One counter per histogram slot, so two histograms used alternately (encrypt,
            // decrypt) each get their own one-in-2^shift sample.
            static CALLS: [std::cell::Cell<u64>; SLOTS] =
                const { [const { std::cell::Cell::new(0) }; SLOTS] };
        }
        let n = CALLS.with(|c| {
            let cell = &c[self.slot];
            let n = cell.get().wrapping_add(1);
            cell.set(n);
            n
        });
        if n & self.mask == 0 {
            Some(std::time::Instant::now())
        } else {
            None
        }
    }

    /// Records a sampled call started by [`SampledHistogram::start`].
    pub fn finish(&self, started: Option<std::time::Instant>) {
        let Some(t0) = started else { return };
        let elapsed = t0.elapsed();
        let secs = elapsed.as_secs_f64();
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (one per bound plus +Inf), the sum in seconds, the sampled
    /// count, and the sampling rate (one call in this many is timed).
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64, u64) {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut acc = 0;
        for b in &self.buckets {
            acc += b.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (
            cumulative,
            sum,
            self.count.load(Ordering::Relaxed),
            self.mask + 1,
        )
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn alternating_histograms_both_sample() {
        let a = SampledHistogram::new(2);
        let b = SampledHistogram::new(2);
        for _ in 0..16 {
            let t = a.start();
            a.finish(t);
            let t = b.start();
            b.finish(t);
        }
        assert_eq!(a.snapshot().2, 4);
        assert_eq!(b.snapshot().2, 4);
    }

    #[test]
    fn samples_one_in_two_to_the_shift() {
        let h = SampledHistogram::new(2);
        for _ in 0..16 {
            let t = h.start();
            h.finish(t);
        }
        let (buckets, sum, count, rate) = h.snapshot();
        assert_eq!((count, rate), (4, 4));
        assert_eq!(*buckets.last().unwrap(), 4);
        assert!(sum >= 0.0);
    }
}
