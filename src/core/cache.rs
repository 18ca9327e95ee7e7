//! Bounded, TTL-limited, LRU cache of data keys.
//!
//! Entries hold `Arc<DataKey>`; when the cache drops its reference on eviction, expiry or
//! clear, and no caller still holds a handle, the key is zeroized by its own `Drop`. A key
//! whose usage budget is spent is treated as expired, so the next lookup misses and the
//! caller fetches a fresh DEK instead of going past the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::core::aead::DataKey;
use crate::core::error::{Error, Result};
use crate::core::fork;

/// A value the cache can hold: anything built around one data key.
pub trait Cached: Send + Sync {
    /// The data key whose budget decides whether the entry is still usable.
    fn data_key(&self) -> &DataKey;
}

impl Cached for DataKey {
    fn data_key(&self) -> &DataKey {
        self
    }
}

/// Cheap counters of cache behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a usable key.
    pub hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Entries removed to respect the entry bound (LRU).
    pub evictions: u64,
    /// Entries removed because their TTL passed or their budget was spent.
    pub expirations: u64,
    /// Entries currently held.
    pub size: u64,
}

/// Summary of the live entries, for gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheUsage {
    /// Age in seconds of the oldest entry.
    pub max_age_seconds: f64,
    /// Largest fraction of a message budget used by any entry.
    pub max_budget_used: f64,
}

/// Monotonic time from the coarse clock (a few ns to read, millisecond resolution).
///
/// The precise clock costs tens of nanoseconds under KVM, a measurable share of a 64-byte
/// seal; a TTL measured in minutes does not need better than millisecond resolution.
fn now() -> Duration {
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

struct Entry<V> {
    key: Arc<V>,
    inserted: Duration,
    last_used: u64,
}

/// foldhash is several times faster than SipHash on short keys and still seeded per map, so
/// chosen keys cannot force collisions; the map is bounded by `max_entries` in any case.
type Map<V> = HashMap<Vec<u8>, Entry<V>, foldhash::fast::RandomState>;

struct Inner<V> {
    map: Map<V>,
    tick: u64,
    /// Fork generation the entries belong to; a forked child finds it stale and starts empty,
    /// so it never shares DEKs or their usage counters with its parent.
    generation: u64,
    hits: u64,
    misses: u64,
}

/// A thread-safe DEK cache. Safe to use with the GIL released.
pub struct DekCache<V: Cached = DataKey> {
    inner: Mutex<Inner<V>>,
    max_entries: usize,
    ttl: Duration,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

impl<V: Cached> std::fmt::Debug for DekCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("max_entries", &self.max_entries)
            .field("ttl", &self.ttl)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<V: Cached> DekCache<V> {
    /// Creates a cache holding at most `max_entries` keys for at most `ttl`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `max_entries` is 0 or the TTL is zero or over a day.
    pub fn new(max_entries: usize, ttl: Duration) -> Result<Self> {
        if max_entries == 0 || max_entries > 1_000_000 {
            return Err(Error::InvalidArgument("max_entries must be in 1..=1000000"));
        }
        if ttl.is_zero() || ttl > Duration::from_secs(86_400) {
            return Err(Error::InvalidArgument("ttl must be in (0, 86400] seconds"));
        }
        Ok(DekCache {
            inner: Mutex::new(Inner {
                hits: 0,
                misses: 0,
                map: Map::default(),
                tick: 0,
                generation: fork::generation(),
            }),
            max_entries,
            ttl,
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
        })
    }

    /// The configured time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The configured entry bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock cannot leave the map half-updated (every mutation is
        // a single HashMap call), so a poisoned lock is safe to keep using.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let generation = fork::generation();
        if inner.generation != generation {
            inner.map.clear();
            inner.generation = generation;
        }
        inner
    }

    fn usable(&self, e: &Entry<V>, now: Duration) -> bool {
        now.saturating_sub(e.inserted) < self.ttl && !e.key.data_key().exhausted()
    }

    /// Returns the key under `id` if it is fresh and has budget left.
    pub fn get(&self, id: &[u8]) -> Option<Arc<V>> {
        self.get_with_age(id).map(|(k, _)| k)
    }

    /// Like [`DekCache::get`], also returning the entry's age (for refresh-ahead).
    pub fn get_with_age(&self, id: &[u8]) -> Option<(Arc<V>, Duration)> {
        let now = now();
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = match inner.map.get_mut(id) {
            Some(e) if self.usable(e, now) => {
                e.last_used = tick;
                Some((Arc::clone(&e.key), now.saturating_sub(e.inserted)))
            }
            Some(_) => {
                inner.map.remove(id);
                self.expirations.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        };
        // Counted under the lock already held: a separate atomic per lookup is one more
        // locked instruction on the hottest path.
        if found.is_some() {
            inner.hits += 1;
        } else {
            inner.misses += 1;
        }
        found
    }

    /// Inserts or replaces the key under `id`, evicting expired entries first and then the
    /// least recently used ones to stay within the bound.
    pub fn put(&self, id: &[u8], key: Arc<V>) {
        let now = now();
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if !inner.map.contains_key(id) && inner.map.len() >= self.max_entries {
            let before = inner.map.len();
            inner.map.retain(|_, e| {
                now.saturating_sub(e.inserted) < self.ttl && !e.key.data_key().exhausted()
            });
            self.expirations
                .fetch_add((before - inner.map.len()) as u64, Ordering::Relaxed);
            while inner.map.len() >= self.max_entries {
                // A linear scan is fine: it runs only on a miss, next to a KMS round trip that
                // costs milliseconds.
                let oldest = inner
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => {
                        inner.map.remove(&k);
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        }
        inner.map.insert(
            id.to_vec(),
            Entry {
                key,
                inserted: now,
                last_used: tick,
            },
        );
    }

    /// Removes one entry; returns whether it was present.
    pub fn remove(&self, id: &[u8]) -> bool {
        self.lock().map.remove(id).is_some()
    }

    /// Removes every entry whose id starts with `prefix` (for example one KMS key); returns
    /// how many were removed.
    pub fn remove_prefix(&self, prefix: &[u8]) -> usize {
        let mut inner = self.lock();
        let before = inner.map.len();
        inner.map.retain(|k, _| !k.starts_with(prefix));
        before - inner.map.len()
    }

    /// Handles to every live entry (for scrape-time gauges and counters).
    pub fn values(&self) -> Vec<Arc<V>> {
        self.lock()
            .map
            .values()
            .map(|e| Arc::clone(&e.key))
            .collect()
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.lock().map.clear();
    }

    /// Number of entries held (expired ones included until they are noticed).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: inner.hits,
            misses: inner.misses,
            evictions: self.evictions.load(Ordering::Relaxed),
            expirations: self.expirations.load(Ordering::Relaxed),
            size: inner.map.len() as u64,
        }
    }

    /// Age of the oldest entry and the largest budget fraction in use, for gauges.
    pub fn usage(&self) -> CacheUsage {
        let now = now();
        let inner = self.lock();
        let mut u = CacheUsage::default();
        for e in inner.map.values() {
            u.max_age_seconds = u
                .max_age_seconds
                .max(now.saturating_sub(e.inserted).as_secs_f64());
            let k = e.key.data_key();
            let used = k.messages_used() as f64 / k.limits().max_messages as f64;
            u.max_budget_used = u.max_budget_used.max(used);
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::aead::UsageLimits;

    fn key() -> Arc<DataKey> {
        Arc::new(DataKey::generate(UsageLimits::default()).unwrap())
    }

    #[test]
    fn hit_miss_and_stats() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        assert!(c.get(b"a").is_none());
        let k = key();
        c.put(b"a", Arc::clone(&k));
        let got = c.get(b"a").unwrap();
        assert!(Arc::ptr_eq(&got, &k));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.size), (1, 1, 1));
    }

    #[test]
    fn ttl_expiry() {
        let c: DekCache = DekCache::new(10, Duration::from_millis(30)).unwrap();
        c.put(b"a", key());
        assert!(c.get(b"a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get(b"a").is_none());
        assert_eq!(c.stats().expirations, 1);
        assert!(c.is_empty());
    }

    #[test]
    fn lru_eviction_respects_bound() {
        let c: DekCache = DekCache::new(3, Duration::from_secs(60)).unwrap();
        for id in [b"a", b"b", b"c"] {
            c.put(id, key());
        }
        assert!(c.get(b"a").is_some()); // a is now most recent; b is the LRU entry
        c.put(b"d", key());
        assert_eq!(c.len(), 3);
        assert!(c.get(b"b").is_none());
        assert!(c.get(b"a").is_some());
        assert_eq!(c.stats().evictions, 1);
        for i in 0..10_000u32 {
            c.put(&i.to_be_bytes(), key());
        }
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn exhausted_key_is_not_served() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        let k = Arc::new(DataKey::generate(UsageLimits::new(2, u64::MAX).unwrap()).unwrap());
        c.put(b"a", Arc::clone(&k));
        k.seal(b"", b"1").unwrap();
        assert!(c.get(b"a").is_some());
        k.seal(b"", b"2").unwrap();
        assert!(c.get(b"a").is_none());
    }

    #[test]
    fn evicted_key_is_dropped_when_unreferenced() {
        let c: DekCache = DekCache::new(1, Duration::from_secs(60)).unwrap();
        let k = key();
        let weak = Arc::downgrade(&k);
        c.put(b"a", k);
        c.put(b"b", key());
        assert!(
            weak.upgrade().is_none(),
            "evicted key must be dropped (and so zeroized)"
        );
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn remove_prefix() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        c.put(b"kms1/a", key());
        c.put(b"kms1/b", key());
        c.put(b"kms2/a", key());
        assert_eq!(c.remove_prefix(b"kms1/"), 2);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bad_config_rejected() {
        assert!(DekCache::<DataKey>::new(0, Duration::from_secs(1)).is_err());
        assert!(DekCache::<DataKey>::new(1, Duration::ZERO).is_err());
    }
}
