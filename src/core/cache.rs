//! Bounded, TTL-limited, LRU cache of data keys.
//!
//! Entries hold `Arc<DataKey>`; when the cache drops its reference on eviction, expiry or
//! clear, and no caller still holds a handle, the key is zeroized by its own `Drop`. A key
//! whose usage budget is spent is treated as expired, so the next lookup misses and the
//! caller fetches a fresh DEK instead of going past the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, Weak};
use std::time::Duration;

use crate::core::aead::DataKey;
use crate::core::clock::Clock;
use crate::core::error::{Error, Result};
use crate::core::fork::{self, ForkSafeMutex};

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

pub use crate::core::clock::{duration_ns, monotonic_ns, now};

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
    hits: u64,
    misses: u64,
}

/// Distinguishes cache instances, so a memo made for one cache is never served by another
/// (an address could be reused after a cache is dropped; a counter is not).
static NEXT_CACHE_UID: AtomicU64 = AtomicU64::new(1);

/// The last hit of one thread on one cache, kept by the caller (typically in a thread-local)
/// so a repeated lookup of the same id skips the mutex and the hash.
///
/// A memo is only served while the cache's epoch is the one it was stamped with. Every change
/// that can remove or replace an entry (put, remove, clear, expiry, eviction, a fork) bumps the
/// epoch under the lock, so a memo never outlives the entry it remembers. The TTL and usage
/// budget are checked again on every memo hit. The memo holds a `Weak` handle: it never keeps a
/// key alive (or unzeroized) after the cache has dropped it.
pub struct Memo<V> {
    cache_uid: u64,
    epoch: u64,
    fork_generation: u64,
    inserted: Duration,
    id: Vec<u8>,
    key: Weak<V>,
}

impl<V> std::fmt::Debug for Memo<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key; the id is a context digest or key reference, not secret, but
        // there is no reason to show it either.
        f.debug_struct("Memo")
            .field("cache_uid", &self.cache_uid)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// A thread-safe DEK cache. Safe to use with the GIL released.
pub struct DekCache<V: Cached = DataKey> {
    /// Per fork generation: a forked child starts empty, so it never shares DEKs or their
    /// usage counters with its parent, and never waits on a lock a parent's thread held.
    inner: ForkSafeMutex<Inner<V>>,
    max_entries: usize,
    ttl: Duration,
    evictions: AtomicU64,
    expirations: AtomicU64,
    /// Bumped (under the lock) by every change that can make a memoized hit stale.
    epoch: AtomicU64,
    uid: u64,
    /// Hits served by a memo, which does not take the lock.
    memo_hits: AtomicU64,
    /// Where TTLs, entry ages and the fence deadline are read from.
    clock: Clock,
    /// Nanoseconds of the cache's clock from which memoized lookups miss (`u64::MAX`: never). The
    /// owner's self-fencing deadline: past it, every seal goes to the owner's slow path,
    /// which confirms its view of the keyring first. Checked against the clock reading the
    /// lookup makes anyway, so the fence costs one atomic load on the hot path.
    fence_ns: AtomicU64,
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
        Self::with_clock(max_entries, ttl, Clock::System)
    }

    /// Like [`DekCache::new`], reading entry ages and the fence deadline from `clock`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `max_entries` is 0 or the TTL is zero or over a day.
    pub fn with_clock(max_entries: usize, ttl: Duration, clock: Clock) -> Result<Self> {
        if max_entries == 0 || max_entries > 1_000_000 {
            return Err(Error::InvalidArgument("max_entries must be in 1..=1000000"));
        }
        if ttl.is_zero() || ttl > Duration::from_secs(86_400) {
            return Err(Error::InvalidArgument("ttl must be in (0, 86400] seconds"));
        }
        Ok(DekCache {
            inner: ForkSafeMutex::new(),
            max_entries,
            ttl,
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            uid: NEXT_CACHE_UID.fetch_add(1, Ordering::Relaxed),
            memo_hits: AtomicU64::new(0),
            clock,
            fence_ns: AtomicU64::new(u64::MAX),
        })
    }

    /// Sets the fence: from `deadline_ns` (a reading of the cache's clock in nanoseconds) on,
    /// [`DekCache::get_memoized`] misses. `u64::MAX` lifts it; 0 closes the cache at once.
    pub fn set_fence_ns(&self, deadline_ns: u64) {
        self.fence_ns.store(deadline_ns, Ordering::Release);
    }

    /// The fence deadline in nanoseconds of the cache's clock (`u64::MAX`: none).
    pub fn fence_ns(&self) -> u64 {
        self.fence_ns.load(Ordering::Acquire)
    }

    /// The clock entry ages and the fence deadline are read from.
    pub fn clock(&self) -> &Clock {
        &self.clock
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
        // a single HashMap call), so a poisoned lock is safe to keep using. The parent's map,
        // in a forked child, is emptied (its keys zeroized as their last handles go) when no
        // thread of the parent held it.
        let (inner, made) = self.inner.lock(
            || Inner {
                hits: 0,
                misses: 0,
                map: Map::default(),
                tick: 0,
            },
            |old| old.map.clear(),
        );
        if made {
            self.bump();
        }
        inner
    }

    /// Invalidates every memo of this cache. Called with the lock held, so a memo stamped
    /// under the lock with the previous epoch can never be taken for current.
    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
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
        self.lookup(id, self.clock.now())
            .map(|(k, age, _)| (k, age))
    }

    /// Like [`DekCache::get_with_age`], served from `memo` when it remembers a hit on `id`
    /// that is still current (same cache, epoch and fork generation, within the TTL, budget
    /// left); otherwise a locked lookup, whose hit (or miss) replaces the memo.
    pub fn get_memoized(
        &self,
        memo: &mut Option<Memo<V>>,
        id: &[u8],
    ) -> Option<(Arc<V>, Duration)> {
        let now = self.clock.now();
        if duration_ns(now) >= self.fence_ns.load(Ordering::Acquire) {
            return None;
        }
        if let Some(m) = memo.as_ref() {
            if m.cache_uid == self.uid
                && m.epoch == self.epoch.load(Ordering::Acquire)
                && m.fork_generation == fork::generation()
                && m.id == id
            {
                let age = now.saturating_sub(m.inserted);
                if age < self.ttl {
                    if let Some(key) = m.key.upgrade() {
                        if !key.data_key().exhausted() {
                            self.memo_hits.fetch_add(1, Ordering::Relaxed);
                            return Some((key, age));
                        }
                    }
                }
            }
        }
        match self.lookup(id, now) {
            Some((key, age, epoch)) => {
                match memo {
                    // Reuse the id buffer: a memo is replaced on every context switch.
                    Some(m) => {
                        m.id.clear();
                        m.id.extend_from_slice(id);
                        m.cache_uid = self.uid;
                        m.epoch = epoch;
                        m.fork_generation = fork::generation();
                        m.inserted = now.saturating_sub(age);
                        m.key = Arc::downgrade(&key);
                    }
                    None => {
                        *memo = Some(Memo {
                            cache_uid: self.uid,
                            epoch,
                            fork_generation: fork::generation(),
                            inserted: now.saturating_sub(age),
                            id: id.to_vec(),
                            key: Arc::downgrade(&key),
                        })
                    }
                }
                Some((key, age))
            }
            None => {
                *memo = None;
                None
            }
        }
    }

    /// The locked lookup: the key, its age and the epoch it was found under.
    fn lookup(&self, id: &[u8], now: Duration) -> Option<(Arc<V>, Duration, u64)> {
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
                self.bump();
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
        let epoch = self.epoch.load(Ordering::Relaxed);
        found.map(|(k, age)| (k, age, epoch))
    }

    /// Inserts or replaces the key under `id`, evicting expired entries first and then the
    /// least recently used ones to stay within the bound.
    pub fn put(&self, id: &[u8], key: Arc<V>) {
        let now = self.clock.now();
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
        // A replaced entry (or one evicted above) must not be served from a memo.
        self.bump();
    }

    /// Removes one entry; returns whether it was present.
    pub fn remove(&self, id: &[u8]) -> bool {
        let mut inner = self.lock();
        let removed = inner.map.remove(id).is_some();
        self.bump();
        removed
    }

    /// Removes every entry whose id starts with `prefix` (for example one KMS key); returns
    /// how many were removed.
    pub fn remove_prefix(&self, prefix: &[u8]) -> usize {
        let mut inner = self.lock();
        let before = inner.map.len();
        inner.map.retain(|k, _| !k.starts_with(prefix));
        self.bump();
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

    /// Drops every entry past its TTL or out of budget; returns how many were dropped.
    ///
    /// Lookups notice expiry lazily, so a key nobody asks for again would otherwise stay in
    /// memory until evicted; the service calls this periodically so that no key outlives its
    /// TTL by more than one refresh period.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now();
        let mut inner = self.lock();
        let before = inner.map.len();
        inner.map.retain(|_, e| self.usable(e, now));
        let dropped = before - inner.map.len();
        if dropped > 0 {
            self.expirations
                .fetch_add(dropped as u64, Ordering::Relaxed);
            self.bump();
        }
        dropped
    }

    /// Drops every entry.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        self.bump();
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
            hits: inner.hits + self.memo_hits.load(Ordering::Relaxed),
            misses: inner.misses,
            evictions: self.evictions.load(Ordering::Relaxed),
            expirations: self.expirations.load(Ordering::Relaxed),
            size: inner.map.len() as u64,
        }
    }

    /// Age of the oldest entry and the largest budget fraction in use, for gauges.
    pub fn usage(&self) -> CacheUsage {
        let now = self.clock.now();
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
    use crate::core::clock::ManualClock;

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
    fn fence_makes_memoized_lookups_miss_until_lifted() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        c.put(b"a", key());
        let mut memo = None;
        assert!(c.get_memoized(&mut memo, b"a").is_some());
        c.set_fence_ns(monotonic_ns() + 60_000_000_000);
        assert!(c.get_memoized(&mut memo, b"a").is_some());
        c.set_fence_ns(0);
        assert!(c.get_memoized(&mut memo, b"a").is_none());
        assert_eq!(c.fence_ns(), 0);
        // The entry itself stays: the owner lifts the fence once it has confirmed its view.
        assert!(c.get(b"a").is_some());
        c.set_fence_ns(u64::MAX);
        assert!(c.get_memoized(&mut memo, b"a").is_some());
    }

    #[test]
    fn ttl_expiry() {
        let m = ManualClock::new(0);
        let c: DekCache = DekCache::with_clock(10, Duration::from_millis(30), m.clock()).unwrap();
        c.put(b"a", key());
        m.advance(Duration::from_millis(29));
        assert!(c.get(b"a").is_some());
        m.advance(Duration::from_millis(1));
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

    fn memo_hit(c: &DekCache, memo: &mut Option<Memo<DataKey>>, id: &[u8]) -> Option<Arc<DataKey>> {
        c.get_memoized(memo, id).map(|(k, _)| k)
    }

    #[test]
    fn memo_serves_repeated_hits_without_the_lock() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        let k = key();
        c.put(b"a", Arc::clone(&k));
        let mut memo = None;
        assert!(Arc::ptr_eq(&memo_hit(&c, &mut memo, b"a").unwrap(), &k));
        let locked_hits = c.lock().hits;
        for _ in 0..5 {
            assert!(Arc::ptr_eq(&memo_hit(&c, &mut memo, b"a").unwrap(), &k));
        }
        // The five repeats came from the memo (the lock's counter did not move), and the
        // stats still count them.
        assert_eq!(c.lock().hits, locked_hits);
        assert_eq!(c.stats().hits, 6);
        // Another id goes through the lock and replaces the memo.
        assert!(memo_hit(&c, &mut memo, b"b").is_none());
        assert!(memo.is_none());
    }

    #[test]
    fn memo_never_serves_a_cleared_key() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        c.put(b"a", key());
        let mut memo = None;
        assert!(memo_hit(&c, &mut memo, b"a").is_some());
        c.clear();
        assert!(memo_hit(&c, &mut memo, b"a").is_none());
    }

    #[test]
    fn memo_never_serves_a_removed_or_retired_key() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        c.put(b"kms1/a", key());
        let mut memo = None;
        assert!(memo_hit(&c, &mut memo, b"kms1/a").is_some());
        c.remove(b"kms1/a");
        assert!(memo_hit(&c, &mut memo, b"kms1/a").is_none());
        c.put(b"kms1/a", key());
        assert!(memo_hit(&c, &mut memo, b"kms1/a").is_some());
        // Retiring a key version removes its entries by prefix.
        assert_eq!(c.remove_prefix(b"kms1/"), 1);
        assert!(memo_hit(&c, &mut memo, b"kms1/a").is_none());
    }

    #[test]
    fn memo_never_serves_an_expired_key() {
        let m = ManualClock::new(0);
        let c: DekCache = DekCache::with_clock(10, Duration::from_millis(30), m.clock()).unwrap();
        c.put(b"a", key());
        let mut memo = None;
        assert!(memo_hit(&c, &mut memo, b"a").is_some());
        m.advance(Duration::from_millis(29));
        assert!(memo_hit(&c, &mut memo, b"a").is_some());
        m.advance(Duration::from_millis(1));
        assert!(memo_hit(&c, &mut memo, b"a").is_none());
        assert_eq!(c.stats().expirations, 1);
    }

    #[test]
    fn memo_follows_a_replaced_entry() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        let (k1, k2) = (key(), key());
        c.put(b"a", Arc::clone(&k1));
        let mut memo = None;
        assert!(Arc::ptr_eq(&memo_hit(&c, &mut memo, b"a").unwrap(), &k1));
        c.put(b"a", Arc::clone(&k2));
        assert!(Arc::ptr_eq(&memo_hit(&c, &mut memo, b"a").unwrap(), &k2));
    }

    #[test]
    fn memo_never_serves_an_evicted_or_spent_key() {
        let c: DekCache = DekCache::new(1, Duration::from_secs(60)).unwrap();
        let k = Arc::new(DataKey::generate(UsageLimits::new(2, u64::MAX).unwrap()).unwrap());
        c.put(b"a", Arc::clone(&k));
        let mut memo = None;
        assert!(memo_hit(&c, &mut memo, b"a").is_some());
        k.seal(b"", b"1").unwrap();
        k.seal(b"", b"2").unwrap();
        assert!(memo_hit(&c, &mut memo, b"a").is_none(), "budget spent");
        c.put(b"a", key());
        assert!(memo_hit(&c, &mut memo, b"a").is_some());
        c.put(b"b", key()); // evicts "a" (bound of one)
        assert!(memo_hit(&c, &mut memo, b"a").is_none());
    }

    #[test]
    fn memo_does_not_keep_a_dropped_key_alive_or_cross_caches() {
        let c: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        let other: DekCache = DekCache::new(10, Duration::from_secs(60)).unwrap();
        let k = key();
        let weak = Arc::downgrade(&k);
        c.put(b"a", k);
        let mut memo = None;
        drop(memo_hit(&c, &mut memo, b"a"));
        c.clear();
        assert!(
            weak.upgrade().is_none(),
            "the memo must not keep the key alive"
        );
        // A memo made on one cache is never served by another, even for the same id.
        let k2 = key();
        c.put(b"a", Arc::clone(&k2));
        assert!(memo_hit(&c, &mut memo, b"a").is_some());
        assert!(memo_hit(&other, &mut memo, b"a").is_none());
    }

    #[test]
    fn manual_clock_drives_ttl_age_and_fence() {
        let m = ManualClock::new(1_000);
        let c: DekCache = DekCache::with_clock(10, Duration::from_secs(60), m.clock()).unwrap();
        assert_eq!(c.clock().now_ns(), 1_000);
        c.put(b"a", key());
        let mut memo = None;
        m.advance(Duration::from_secs(59));
        let (_, age) = c.get_memoized(&mut memo, b"a").unwrap();
        assert_eq!(age, Duration::from_secs(59));
        assert_eq!(c.get_with_age(b"a").unwrap().1, Duration::from_secs(59));
        assert!((c.usage().max_age_seconds - 59.0).abs() < 1e-9);
        // The fence is read on the same clock: a deadline one second ahead holds until the
        // clock reaches it, however long the test really takes.
        c.set_fence_ns(m.now_ns() + 1_000_000_000);
        assert!(c.get_memoized(&mut memo, b"a").is_some());
        m.advance(Duration::from_millis(999));
        assert!(c.get_memoized(&mut memo, b"a").is_some());
        m.advance(Duration::from_millis(1));
        assert!(c.get_memoized(&mut memo, b"a").is_none());
        c.set_fence_ns(u64::MAX);
        // Exactly at the TTL the entry is gone, from the memo and from the map.
        assert!(c.get_memoized(&mut memo, b"a").is_none());
        assert_eq!(c.stats().expirations, 1);
        c.put(b"b", key());
        m.advance(Duration::from_secs(61));
        assert_eq!(c.purge_expired(), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn manual_clock_does_not_affect_system_caches() {
        let m = ManualClock::new(0);
        let manual: DekCache = DekCache::with_clock(10, Duration::from_secs(1), m.clock()).unwrap();
        let system: DekCache = DekCache::new(10, Duration::from_secs(1)).unwrap();
        manual.put(b"a", key());
        system.put(b"a", key());
        m.advance(Duration::from_secs(2));
        assert!(manual.get(b"a").is_none());
        assert!(system.get(b"a").is_some());
    }

    #[test]
    fn bad_config_rejected() {
        assert!(DekCache::<DataKey>::new(0, Duration::from_secs(1)).is_err());
        assert!(DekCache::<DataKey>::new(1, Duration::ZERO).is_err());
    }
}
