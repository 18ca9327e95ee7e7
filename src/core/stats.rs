//! Process-wide hot-path counters kept in atomics.
//!
//! Prometheus reads them at scrape time through a custom collector, so counting an operation
//! costs one relaxed atomic add instead of a Python call (ARCHITECTURE.md, rule 5).

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
