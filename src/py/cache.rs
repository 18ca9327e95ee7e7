//! `DekCache`: the Rust DEK cache exposed to Python, with one-call fast paths for sealing and
//! opening on a hit.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::core::aead::DataKey;
use crate::core::cache::{Cached, DekCache, Memo};
use crate::core::clock::Clock;
use crate::core::envelope::{self, Sealer};
use crate::core::stats::{LabelTotals, SampledHistogram, LATENCY_BUCKETS};
use crate::core::Error;
use crate::py::bufs::{bytes_arg, maybe_detach, new_bytes, opt_bytes_arg};
use crate::py::clock::PyManualClock;
use crate::py::envelope::{seal_with, PyEnvelopeSealer};
use crate::py::errors::{guard, to_py, CoreResultExt};
use crate::py::keys::PyDataKey;

/// What a cache entry holds: a bare data key (decryption) or a sealer (encryption).
pub enum ItemKind {
    Key(Arc<DataKey>),
    Sealer(Arc<Sealer>),
}

/// A cache entry: the key material plus an optional label (the data class) under which its
/// operations are counted, in Rust atomics, for metrics read at scrape time.
///
/// A sealer's seals are its data key's own message and byte counters (no extra atomics on the
/// encrypt path); opens are counted in the entry. On drop the counts fold into the totals.
pub struct Item {
    kind: ItemKind,
    label: Option<(Arc<str>, Arc<LabelTotals>)>,
    opens: AtomicU64,
    opened_bytes: AtomicU64,
}

impl Cached for Item {
    fn data_key(&self) -> &DataKey {
        match &self.kind {
            ItemKind::Key(k) => k,
            ItemKind::Sealer(s) => s.key(),
        }
    }
}

impl Item {
    fn count_open(&self, bytes: usize) {
        if self.label.is_some() {
            self.opens.fetch_add(1, Ordering::Relaxed);
            self.opened_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Operations and bytes this entry accounts for.
    fn current(&self) -> (u64, u64) {
        match &self.kind {
            ItemKind::Sealer(s) => (s.key().messages_used(), s.key().bytes_used()),
            ItemKind::Key(_) => (
                self.opens.load(Ordering::Relaxed),
                self.opened_bytes.load(Ordering::Relaxed),
            ),
        }
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if let Some((label, totals)) = &self.label {
            let (ops, bytes) = self.current();
            totals.add(label, ops, bytes);
        }
    }
}

/// A bounded LRU cache of data keys with a TTL and per-key usage limits.
///
/// Entries are dropped (and their keys zeroized once no handle remains) on eviction, expiry
/// and `clear()`. Lookups are safe from many threads.
#[pyclass(frozen, name = "DekCache", module = "greenlang_crypto._core")]
pub struct PyDekCache {
    inner: DekCache<Item>,
    totals: Arc<LabelTotals>,
    latency: SampledHistogram,
    /// Envelopes whose key version is below this are never opened from the cache: a hit is
    /// reported as a miss, so the caller's slow path checks the keyring and refuses.
    min_key_version: AtomicU32,
    /// When set, envelopes without a key commitment are never opened from the cache (a miss,
    /// so the caller's slow path applies the commitment policy and raises its typed error).
    require_commitment: AtomicBool,
}

fn item_to_py(py: Python<'_>, item: &Item) -> PyResult<Py<PyAny>> {
    Ok(match &item.kind {
        ItemKind::Key(k) => Py::new(py, PyDataKey::wrap(Arc::clone(k)))?.into_any(),
        ItemKind::Sealer(s) => Py::new(
            py,
            PyEnvelopeSealer {
                inner: Arc::clone(s),
            },
        )?
        .into_any(),
    })
}

#[pymethods]
impl PyDekCache {
    #[new]
    #[pyo3(signature = (max_entries=1000, ttl_seconds=300.0, *, clock=None))]
    fn new(
        max_entries: usize,
        ttl_seconds: f64,
        clock: Option<PyRef<'_, PyManualClock>>,
    ) -> PyResult<Self> {
        if !ttl_seconds.is_finite() || ttl_seconds <= 0.0 {
            return Err(to_py(Error::InvalidArgument(
                "ttl must be in (0, 86400] seconds",
            )));
        }
        let ttl = Duration::try_from_secs_f64(ttl_seconds)
            .map_err(|_| to_py(Error::InvalidArgument("ttl must be in (0, 86400] seconds")))?;
        Ok(PyDekCache {
            inner: DekCache::with_clock(
                max_entries,
                ttl,
                clock.map_or(Clock::System, |c| c.clock()),
            )
            .py()?,
            totals: Arc::new(LabelTotals::default()),
            // One call in 16 is timed (see SampledHistogram).
            latency: SampledHistogram::new(4),
            min_key_version: AtomicU32::new(0),
            require_commitment: AtomicBool::new(false),
        })
    }

    /// The lowest key version `open` serves from the cache (0: no limit).
    #[getter]
    fn min_key_version(&self) -> u32 {
        self.min_key_version.load(Ordering::Acquire)
    }

    /// Whether `open` refuses envelopes without a key commitment (reported as a miss).
    #[getter]
    fn require_commitment(&self) -> bool {
        self.require_commitment.load(Ordering::Acquire)
    }

    /// Makes `open` refuse envelopes without a key commitment from now on (it cannot be
    /// turned off again on this cache).
    fn set_require_commitment(&self) {
        self.require_commitment.store(true, Ordering::Release);
    }

    /// Raises the lowest key version `open` serves from the cache; it never goes down.
    fn raise_min_key_version(&self, version: u32) -> u32 {
        self.min_key_version
            .fetch_max(version, Ordering::AcqRel)
            .max(version)
    }

    /// Returns the DataKey or EnvelopeSealer under `id`, or None when absent, expired or spent.
    fn get(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        guard(|| match self.inner.get(&bytes_arg(id, "id")?) {
            Some(item) => Ok(Some(item_to_py(py, &item)?)),
            None => Ok(None),
        })
    }

    /// Like `get`, also returning the entry's age in seconds: `(item, age)` or None.
    fn get_with_age(
        &self,
        py: Python<'_>,
        id: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(Py<PyAny>, f64)>> {
        guard(|| match self.inner.get_with_age(&bytes_arg(id, "id")?) {
            Some((item, age)) => Ok(Some((item_to_py(py, &item)?, age.as_secs_f64()))),
            None => Ok(None),
        })
    }

    /// Stores a DataKey or an EnvelopeSealer under `id`.
    #[pyo3(signature = (id, item, label=None))]
    fn put(
        &self,
        id: &Bound<'_, PyAny>,
        item: &Bound<'_, PyAny>,
        label: Option<&str>,
    ) -> PyResult<()> {
        guard(|| {
            let id = bytes_arg(id, "id")?;
            let kind = if let Ok(k) = item.cast::<PyDataKey>() {
                ItemKind::Key(Arc::clone(&k.get().inner))
            } else if let Ok(s) = item.cast::<PyEnvelopeSealer>() {
                ItemKind::Sealer(Arc::clone(&s.get().inner))
            } else {
                return Err(PyTypeError::new_err(
                    "item must be a DataKey or an EnvelopeSealer",
                ));
            };
            let label = label.map(|l| (Arc::from(l), Arc::clone(&self.totals)));
            let item = Item {
                kind,
                label,
                opens: AtomicU64::new(0),
                opened_bytes: AtomicU64::new(0),
            };
            self.inner.put(&id, Arc::new(item));
            Ok(())
        })
    }

    /// Sampled latency of `seal`/`open` hits: ``(bounds, cumulative_counts, sum_seconds,
    /// sampled_count, sample_rate)``; the last cumulative count is the +Inf bucket, and one
    /// call in ``sample_rate`` is timed.
    #[allow(clippy::type_complexity)]
    fn latency(&self) -> (Vec<f64>, Vec<u64>, f64, u64, u64) {
        let (buckets, sum, count, rate) = self.latency.snapshot();
        (LATENCY_BUCKETS.to_vec(), buckets, sum, count, rate)
    }

    /// Operations and bytes per label (the label given to `put`), including entries already
    /// evicted: ``{label: (operations, bytes)}``. Sealer entries count every seal made with
    /// their data key; key entries count the opens made through `open`.
    fn counts(&self) -> std::collections::HashMap<String, (u64, u64)> {
        let live = self.inner.values();
        self.totals.snapshot(live.iter().filter_map(|i| {
            let (label, _) = i.label.as_ref()?;
            let (ops, bytes) = i.current();
            Some((&**label, ops, bytes))
        }))
    }

    /// Seals with the sealer cached under `id`; returns None on a miss (or when the cached
    /// key just ran out of budget), so the caller fetches a new key and retries.
    /// With `max_age`, an entry older than that many seconds counts as a miss, so the caller
    /// refreshes a DEK before its TTL runs out.
    #[pyo3(signature = (id, plaintext, associated_data=None, max_age=None))]
    fn seal<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
        plaintext: &Bound<'py, PyAny>,
        associated_data: Option<&Bound<'py, PyAny>>,
        max_age: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        guard(|| {
            let pt = bytes_arg(plaintext, "plaintext")?;
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            self.seal_hit(py, &bytes_arg(id, "id")?, &pt, &aad, max_age)
        })
    }

    /// Opens `envelope` if the DEK it references is cached; returns None on a miss.
    #[pyo3(signature = (envelope, context, associated_data=None))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        envelope: &Bound<'py, PyAny>,
        context: &Bound<'py, PyAny>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        guard(|| {
            let env = bytes_arg(envelope, "envelope")?;
            let ctx = bytes_arg(context, "context")?;
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            let parsed = envelope::parse(&env).py()?;
            if self.refuses(&parsed) {
                return Ok(None);
            }
            let Some(item) = self.get_for_open(&parsed, &ctx) else {
                return Ok(None);
            };
            // Open with the header parsed above instead of parsing the envelope a second time.
            let key = item.data_key();
            let t0 = self.latency.start();
            let out = new_bytes(py, parsed.plaintext_len(), |out| {
                maybe_detach(py, env.len(), || {
                    envelope::open_into(key, &parsed, &ctx, &aad, out)
                })
                .py()
            });
            self.latency.finish(t0);
            let out = out?;
            item.count_open(parsed.plaintext_len());
            Ok(Some(out))
        })
    }

    /// Sets the self-fencing deadline, in nanoseconds of the cache's clock (`monotonic_ns()`,
    /// or the `ManualClock` it was built on): from then on a seal through this cache misses
    /// (the caller confirms its keyring view first). 0 closes the cache to sealing at once;
    /// `None` lifts the fence.
    #[pyo3(signature = (deadline_ns=None))]
    fn set_fence(&self, deadline_ns: Option<u64>) {
        self.inner.set_fence_ns(deadline_ns.unwrap_or(u64::MAX));
    }

    /// The self-fencing deadline (`None` when there is none).
    #[getter]
    fn fence_deadline(&self) -> Option<u64> {
        match self.inner.fence_ns() {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// Removes one entry; returns whether it existed.
    fn remove(&self, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.inner.remove(&bytes_arg(id, "id")?))
    }

    /// Removes every entry whose id starts with `prefix`; returns the count.
    fn remove_prefix(&self, prefix: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.inner.remove_prefix(&bytes_arg(prefix, "prefix")?))
    }

    /// Drops entries past their TTL or out of budget; returns how many were dropped.
    fn purge_expired(&self) -> usize {
        self.inner.purge_expired()
    }

    /// Drops every entry.
    fn clear(&self) {
        self.inner.clear();
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The cache's clock reading in nanoseconds (the clock its TTL and fence are read on).
    fn now_ns(&self) -> u64 {
        self.inner.clock().now_ns()
    }

    /// Configured TTL in seconds.
    #[getter]
    fn ttl_seconds(&self) -> f64 {
        self.inner.ttl().as_secs_f64()
    }

    /// Configured entry bound.
    #[getter]
    fn max_entries(&self) -> usize {
        self.inner.max_entries()
    }

    /// Counters: hits, misses, evictions, expirations, size.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("expirations", s.expirations)?;
        d.set_item("size", s.size)?;
        Ok(d)
    }

    /// Gauges: the oldest entry's age and the largest budget fraction in use.
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let u = self.inner.usage();
        let d = PyDict::new(py);
        d.set_item("max_age_seconds", u.max_age_seconds)?;
        d.set_item("max_budget_used", u.max_budget_used)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let s = self.inner.stats();
        format!(
            "<DekCache size={} max_entries={} ttl={}s hits={} misses={}>",
            s.size,
            self.inner.max_entries(),
            self.inner.ttl().as_secs_f64(),
            s.hits,
            s.misses
        )
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("DekCache cannot be pickled"))
    }
}

/// Scratch buffers larger than this are released after use.
const MAX_SCRATCH: usize = 64 * 1024;

/// Text plaintexts up to this size are opened into a stack buffer.
const STACK_PLAINTEXT: usize = 128;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    // The last hit of this thread, one memo for seals and one for opens: a service seals
    // through its encryption cache and opens through its decryption cache, so keeping them
    // apart lets a thread that alternates the two keep both memos. The memo never holds a
    // key alive and is checked against the cache's epoch (see core::cache::Memo).
    static SEAL_MEMO: std::cell::RefCell<Option<Memo<Item>>> =
        const { std::cell::RefCell::new(None) };
    static OPEN_MEMO: std::cell::RefCell<Option<Memo<Item>>> =
        const { std::cell::RefCell::new(None) };
}

impl PyDekCache {
    /// Seals on a hit through this thread's seal memo; `Ok(None)` on a miss, an entry older
    /// than `max_age`, or a key whose budget just ran out.
    fn seal_hit<'py>(
        &self,
        py: Python<'py>,
        id: &[u8],
        pt: &[u8],
        aad: &[u8],
        max_age: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let hit = SEAL_MEMO.with(|m| self.inner.get_memoized(&mut m.borrow_mut(), id));
        let Some((item, age)) = hit else {
            return Ok(None);
        };
        if max_age.is_some_and(|m| age.as_secs_f64() >= m) {
            return Ok(None);
        }
        let ItemKind::Sealer(sealer) = &item.kind else {
            return Err(PyTypeError::new_err("cache entry is not an EnvelopeSealer"));
        };
        let t0 = self.latency.start();
        let sealed = seal_with(py, sealer, pt, aad);
        self.latency.finish(t0);
        match sealed {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_instance_of::<crate::py::errors::KeyUsageExceededError>(py) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the cache must not open `parsed` (its key version is below the minimum, or it
    /// has no commitment while commitments are required): reported as a miss.
    fn refuses(&self, parsed: &envelope::Parsed<'_>) -> bool {
        parsed.key_version < self.min_key_version.load(Ordering::Acquire)
            || (parsed.commitment.is_none() && self.require_commitment.load(Ordering::Acquire))
    }

    /// The cached key an envelope refers to under `ctx`, through this thread's open memo.
    fn get_for_open(&self, parsed: &envelope::Parsed<'_>, ctx: &[u8]) -> Option<Arc<Item>> {
        envelope::with_key_ref_id(parsed, ctx, |id| {
            OPEN_MEMO.with(|m| self.inner.get_memoized(&mut m.borrow_mut(), id))
        })
        .map(|(item, _)| item)
    }

    /// Opens into a new `str` (UTF-8 checked) or `bytes`; `Ok(None)` on a cache miss.
    /// `aad_suffix` is [`envelope::aad_suffix`] of `ctx` and the caller's associated data.
    fn open_value<'py>(
        &self,
        py: Python<'py>,
        env: &[u8],
        ctx: &[u8],
        aad_suffix: &[u8],
        text: bool,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let parsed = envelope::parse(env).py()?;
        if self.refuses(&parsed) {
            return Ok(None);
        }
        let Some(item) = self.get_for_open(&parsed, ctx) else {
            return Ok(None);
        };
        let key = item.data_key();
        let t0 = self.latency.start();
        let out: PyResult<Bound<'py, PyAny>> = if text {
            let n = parsed.plaintext_len();
            // Decrypt into a buffer, build the str from it, then wipe the bytes that held
            // plaintext (the str is the only copy the caller asked for).
            let open_str = |buf: &mut [u8]| {
                let r = envelope::open_into_with_suffix(key, &parsed, ctx, aad_suffix, buf)
                    .py()
                    .and_then(|()| decode_utf8(py, buf));
                zeroize::Zeroize::zeroize(buf);
                r
            };
            if n <= STACK_PLAINTEXT {
                // Short values (the PII case): a stack buffer, no thread-local lookup per row.
                open_str(&mut [0u8; STACK_PLAINTEXT][..n])
            } else {
                // A per-thread scratch buffer: no allocation or zero-fill per row.
                SCRATCH.with(|cell| {
                    let mut scratch = cell.borrow_mut();
                    if scratch.len() < n {
                        scratch.resize(n, 0);
                    }
                    let r = open_str(&mut scratch[..n]);
                    if scratch.len() > MAX_SCRATCH {
                        // Do not keep a large buffer per thread after an unusually big value.
                        *scratch = Vec::new();
                    }
                    r
                })
            }
        } else {
            new_bytes(py, parsed.plaintext_len(), |out| {
                maybe_detach(py, env.len(), || {
                    envelope::open_into_with_suffix(key, &parsed, ctx, aad_suffix, out)
                })
                .py()
            })
            .map(Bound::into_any)
        };
        self.latency.finish(t0);
        let out = out?;
        item.count_open(parsed.plaintext_len());
        Ok(Some(out))
    }
}

/// A new `str` from UTF-8 bytes, validated once, by Python's own decoder (a Rust check
/// before `PyString::new` would scan the bytes twice). Invalid UTF-8 is an error; the opener
/// sends it to its fallback, which raises the typed one.
fn decode_utf8<'py>(py: Python<'py>, buf: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let len =
        pyo3::ffi::Py_ssize_t::try_from(buf.len()).map_err(|_| to_py(Error::PayloadTooLarge))?;
    // SAFETY: `buf` is valid for `len` bytes for the duration of the call, which copies them;
    // a null `errors` means "strict". The GIL is held (`py`).
    let raw =
        unsafe { pyo3::ffi::PyUnicode_DecodeUTF8(buf.as_ptr().cast(), len, std::ptr::null()) };
    // SAFETY: `raw` is a new reference or null with a Python error set.
    unsafe { Bound::from_owned_ptr_or_err(py, raw) }
}

/// A per-column decryptor for database result processing: one call per value, with the
/// context and associated data fixed.
///
/// `None` stays `None`. A cached DEK opens the value in one Rust call (and decodes UTF-8 when
/// `text` is set); a cache miss or any failure goes to `fallback(value)`, the service's own
/// decrypt, which fetches the DEK, accounts for failures and raises the typed error.
#[pyclass(frozen, name = "CachedOpener", module = "greenlang_crypto._core")]
pub struct PyCachedOpener {
    cache: Py<PyDekCache>,
    context: Vec<u8>,
    /// The associated data after the envelope header, built once (it is fixed per column).
    aad_suffix: Vec<u8>,
    text: bool,
    fallback: Py<PyAny>,
}

#[pymethods]
impl PyCachedOpener {
    #[new]
    #[pyo3(signature = (cache, context, associated_data, fallback, text=false))]
    fn new(
        cache: Py<PyDekCache>,
        context: &Bound<'_, PyAny>,
        associated_data: Option<&Bound<'_, PyAny>>,
        fallback: Py<PyAny>,
        text: bool,
    ) -> PyResult<Self> {
        let context = bytes_arg(context, "context")?.into_owned();
        crate::core::context::validate(&context).py()?;
        let aad = opt_bytes_arg(associated_data, "associated_data")?;
        Ok(PyCachedOpener {
            cache,
            aad_suffix: envelope::aad_suffix(&context, &aad),
            context,
            text,
            fallback,
        })
    }

    fn __call__<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.open(py, value)
    }

    /// The same as calling the opener. As a bound method it is called through vectorcall,
    /// without the one-element argument tuple that `__call__` needs (about 10% of a 64-byte
    /// value's decrypt), so result processors use `opener.open`.
    fn open<'py>(&self, py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if value.is_none() {
            return Ok(value.clone());
        }
        let fast = guard(|| {
            let env = bytes_arg(value, "value")?;
            self.cache
                .get()
                .open_value(py, &env, &self.context, &self.aad_suffix, self.text)
        });
        match fast {
            Ok(Some(out)) => Ok(out),
            // Misses and errors alike take the service's path, which reports them properly.
            _ => self.fallback.bind(py).call1((value,)),
        }
    }

    fn __repr__(&self) -> String {
        format!("<CachedOpener text={}>", self.text)
    }
}

/// The current encryption cache of a service, shared with the sealers that seal through it.
///
/// The service sets a new cache here whenever it replaces its caches (a new primary key
/// version); every sealer reads the slot on each call, so no value is sealed under a version
/// the service has moved away from. A lock guards the reference only: readers copy it out and
/// release the lock before sealing, so a seal that releases the GIL never holds it.
#[pyclass(frozen, name = "CacheSlot", module = "greenlang_crypto._core")]
pub struct PyCacheSlot {
    cache: std::sync::RwLock<Py<PyDekCache>>,
}

impl PyCacheSlot {
    /// The cache in the slot now (a new reference).
    fn current(&self, py: Python<'_>) -> Py<PyDekCache> {
        let guard = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone_ref(py)
    }
}

#[pymethods]
impl PyCacheSlot {
    #[new]
    fn new(cache: Py<PyDekCache>) -> Self {
        PyCacheSlot {
            cache: std::sync::RwLock::new(cache),
        }
    }

    /// The cache in the slot now.
    fn get(&self, py: Python<'_>) -> Py<PyDekCache> {
        self.current(py)
    }

    /// Puts `cache` in the slot; the next seal through it uses `cache`.
    fn set(&self, cache: Py<PyDekCache>) {
        // The previous reference is dropped after the lock is released.
        let _previous = std::mem::replace(
            &mut *self
                .cache
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            cache,
        );
    }

    fn __repr__(&self) -> String {
        "<CacheSlot>".to_owned()
    }
}

/// A per-column encryptor for database parameters: one call per value, with the context and
/// associated data fixed.
///
/// `None` stays `None`. A `str` (when `text`) or `bytes` value whose sealer is cached is
/// sealed in one Rust call; anything else (a cache miss, another type, a value over
/// `max_plaintext`, any failure) goes to `fallback(value)`, the service's own encrypt, which
/// fetches a DEK, accounts for failures and raises the typed error.
///
/// The encryption cache is read from a [`PyCacheSlot`] on every call, not kept: the service
/// replaces that cache when its primary key version changes, and a value sealed after that
/// must use the new version.
#[pyclass(frozen, name = "CachedSealer", module = "greenlang_crypto._core")]
pub struct PyCachedSealer {
    slot: Py<PyCacheSlot>,
    context: Vec<u8>,
    aad: Vec<u8>,
    text: bool,
    max_age: Option<f64>,
    max_plaintext: usize,
    fallback: Py<PyAny>,
}

#[pymethods]
impl PyCachedSealer {
    #[new]
    #[pyo3(signature = (slot, context, associated_data, fallback, *, text=false,
                        max_age=None, max_plaintext=usize::MAX))]
    fn new(
        slot: Py<PyCacheSlot>,
        context: &Bound<'_, PyAny>,
        associated_data: Option<&Bound<'_, PyAny>>,
        fallback: Py<PyAny>,
        text: bool,
        max_age: Option<f64>,
        max_plaintext: usize,
    ) -> PyResult<Self> {
        let context = bytes_arg(context, "context")?.into_owned();
        crate::core::context::validate(&context).py()?;
        Ok(PyCachedSealer {
            slot,
            context,
            aad: opt_bytes_arg(associated_data, "associated_data")?.into_owned(),
            text,
            max_age,
            max_plaintext,
            fallback,
        })
    }

    fn __call__<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.seal(py, value)
    }

    /// The same as calling the sealer. As a bound method it is called through vectorcall,
    /// without the one-element argument tuple that `__call__` needs, so bind processors use
    /// `sealer.seal`.
    fn seal<'py>(&self, py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if value.is_none() {
            return Ok(value.clone());
        }
        let fast = guard(|| {
            // Exact types only: subclasses (a pre-sealed value, for example) and every other
            // type take the fallback, which knows what they mean.
            let utf8;
            let pt: &[u8] = if self.text && value.is_exact_instance_of::<pyo3::types::PyString>() {
                // A lone surrogate fails here and takes the fallback, which reports it.
                utf8 = value.cast::<pyo3::types::PyString>()?.to_str()?;
                utf8.as_bytes()
            } else if !self.text && value.is_exact_instance_of::<PyBytes>() {
                value.cast::<PyBytes>()?.as_bytes()
            } else {
                return Ok(None);
            };
            if pt.len() > self.max_plaintext {
                return Ok(None);
            }
            let cache = self.slot.get().current(py);
            cache
                .get()
                .seal_hit(py, &self.context, pt, &self.aad, self.max_age)
        });
        match fast {
            Ok(Some(out)) => Ok(out.into_any()),
            // Misses and errors alike take the service's path, which reports them properly.
            _ => self.fallback.bind(py).call1((value,)),
        }
    }

    fn __repr__(&self) -> String {
        format!("<CachedSealer text={}>", self.text)
    }
}
