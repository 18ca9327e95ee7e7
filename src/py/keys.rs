//! `DataKey` and `BlindIndexKey`: opaque handles over key material that stays in Rust.

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::core::aead::{DataKey, UsageLimits, MAX_MESSAGES_CAP};
use crate::core::index::BlindIndexKey;
use crate::py::bufs::{bytes_arg, maybe_detach, new_bytes, opt_bytes_arg};
use crate::py::errors::{guard, CoreResultExt};

pub(crate) fn limits(max_messages: Option<u64>, max_bytes: Option<u64>) -> PyResult<UsageLimits> {
    UsageLimits::new(
        max_messages.unwrap_or(MAX_MESSAGES_CAP),
        max_bytes.unwrap_or(u64::MAX),
    )
    .py()
}

/// An AES-256-GCM data key. The key bytes live in Rust, are zeroized when the last handle
/// goes away, never appear in `repr`, and the handle cannot be pickled or copied.
#[pyclass(frozen, name = "DataKey", module = "greenlang_crypto._core")]
pub struct PyDataKey {
    pub(crate) inner: Arc<DataKey>,
}

impl PyDataKey {
    pub(crate) fn wrap(inner: Arc<DataKey>) -> Self {
        PyDataKey { inner }
    }
}

#[pymethods]
impl PyDataKey {
    /// Generates a random key inside AWS-LC.
    #[staticmethod]
    #[pyo3(signature = (*, max_messages=None, max_bytes=None))]
    fn generate(max_messages: Option<u64>, max_bytes: Option<u64>) -> PyResult<Self> {
        guard(|| {
            Ok(Self::wrap(Arc::new(
                DataKey::generate(limits(max_messages, max_bytes)?).py()?,
            )))
        })
    }

    /// Loads a key from 32 raw bytes (what a KMS GenerateDataKey call returns).
    #[staticmethod]
    #[pyo3(signature = (key, *, max_messages=None, max_bytes=None))]
    fn from_bytes(
        key: &Bound<'_, PyAny>,
        max_messages: Option<u64>,
        max_bytes: Option<u64>,
    ) -> PyResult<Self> {
        guard(|| {
            let raw = zeroize::Zeroizing::new(bytes_arg(key, "key")?.into_owned());
            Ok(Self::wrap(Arc::new(
                DataKey::from_bytes(&raw, limits(max_messages, max_bytes)?).py()?,
            )))
        })
    }

    /// Seals `plaintext`; returns `nonce || ciphertext || tag`. The nonce is random.
    #[pyo3(signature = (plaintext, associated_data=None))]
    fn seal<'py>(
        &self,
        py: Python<'py>,
        plaintext: &Bound<'py, PyAny>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let pt = bytes_arg(plaintext, "plaintext")?;
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            let len = DataKey::sealed_len(pt.len()).py()?;
            let key = &self.inner;
            new_bytes(py, len, |out| {
                maybe_detach(py, pt.len(), || key.seal_into(&aad, &pt, out)).py()
            })
        })
    }

    /// Opens `nonce || ciphertext || tag`; raises `DecryptionError` on any failure.
    #[pyo3(signature = (ciphertext, associated_data=None))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        ciphertext: &Bound<'py, PyAny>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let ct = bytes_arg(ciphertext, "ciphertext")?;
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            let len = DataKey::opened_len(ct.len())
                .map_err(|_| crate::py::errors::to_py(crate::core::Error::Authentication))?;
            let key = &self.inner;
            new_bytes(py, len, |out| {
                maybe_detach(py, ct.len(), || key.open_into(&aad, &ct, out)).py()
            })
        })
    }

    /// Seals many values in one call with the GIL released; the budget for the whole batch is
    /// reserved first, so the batch is refused as a whole if it does not fit.
    #[pyo3(signature = (plaintexts, associated_data=None))]
    fn seal_batch<'py>(
        &self,
        py: Python<'py>,
        plaintexts: Vec<Bound<'py, PyAny>>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        guard(|| {
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            let inputs: Vec<_> = plaintexts
                .iter()
                .map(|p| bytes_arg(p, "plaintext"))
                .collect::<PyResult<_>>()?;
            let total: u64 = inputs.iter().map(|p| p.len() as u64).sum();
            let key = &self.inner;
            key.reserve_batch(inputs.len() as u64, total).py()?;
            let sealed: Vec<Vec<u8>> = py
                .detach(|| {
                    inputs
                        .iter()
                        .map(|p| {
                            let mut out = vec![0u8; DataKey::sealed_len(p.len())?];
                            key.seal_reserved(&aad, p, &mut out)?;
                            Ok(out)
                        })
                        .collect::<crate::core::Result<_>>()
                })
                .py()?;
            PyList::new(py, sealed.iter().map(|s| PyBytes::new(py, s)))
        })
    }

    /// Opens many values in one call with the GIL released; any failure fails the batch.
    #[pyo3(signature = (ciphertexts, associated_data=None))]
    fn open_batch<'py>(
        &self,
        py: Python<'py>,
        ciphertexts: Vec<Bound<'py, PyAny>>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        guard(|| {
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            let inputs: Vec<_> = ciphertexts
                .iter()
                .map(|p| bytes_arg(p, "ciphertext"))
                .collect::<PyResult<_>>()?;
            let key = &self.inner;
            let opened: Vec<zeroize::Zeroizing<Vec<u8>>> = py
                .detach(|| {
                    inputs
                        .iter()
                        .map(|c| {
                            let len = DataKey::opened_len(c.len())
                                .map_err(|_| crate::core::Error::Authentication)?;
                            let mut out = zeroize::Zeroizing::new(vec![0u8; len]);
                            key.open_into(&aad, c, &mut out)?;
                            Ok(out)
                        })
                        .collect::<crate::core::Result<_>>()
                })
                .py()?;
            PyList::new(py, opened.iter().map(|s| PyBytes::new(py, s)))
        })
    }

    /// Wraps `dek` under this key (the local provider's KEK operation).
    #[pyo3(signature = (dek, associated_data=None))]
    fn wrap_key<'py>(
        &self,
        py: Python<'py>,
        dek: &PyDataKey,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            let wrapped = self.inner.wrap_key(&dek.inner, &aad).py()?;
            Ok(PyBytes::new(py, &wrapped))
        })
    }

    /// Unwraps a key wrapped by `wrap_key`; the key bytes never reach Python.
    #[pyo3(signature = (wrapped, associated_data=None, *, max_messages=None, max_bytes=None))]
    fn unwrap_key(
        &self,
        wrapped: &Bound<'_, PyAny>,
        associated_data: Option<&Bound<'_, PyAny>>,
        max_messages: Option<u64>,
        max_bytes: Option<u64>,
    ) -> PyResult<Self> {
        guard(|| {
            let w = bytes_arg(wrapped, "wrapped")?;
            let aad = opt_bytes_arg(associated_data, "associated_data")?;
            let k = self
                .inner
                .unwrap_key(&w, &aad, limits(max_messages, max_bytes)?)
                .py()?;
            Ok(Self::wrap(Arc::new(k)))
        })
    }

    /// Derives the blind-index key for `purpose` (HKDF-SHA256, RFC 5869).
    fn derive_index_key(&self, purpose: &Bound<'_, PyAny>) -> PyResult<PyBlindIndexKey> {
        guard(|| {
            let p = bytes_arg(purpose, "purpose")?;
            Ok(PyBlindIndexKey {
                inner: BlindIndexKey::derive(&self.inner, &p).py()?,
            })
        })
    }

    /// A public 16-hex-digit identifier of the key (an HMAC of a label, not key bytes).
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner
            .fingerprint()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Messages sealed so far.
    #[getter]
    fn messages_used(&self) -> u64 {
        self.inner.messages_used()
    }

    /// Plaintext bytes sealed so far.
    #[getter]
    fn bytes_used(&self) -> u64 {
        self.inner.bytes_used()
    }

    /// The message budget.
    #[getter]
    fn max_messages(&self) -> u64 {
        self.inner.limits().max_messages
    }

    /// The byte budget.
    #[getter]
    fn max_bytes(&self) -> u64 {
        self.inner.limits().max_bytes
    }

    /// Seconds since the key was created or loaded in this process.
    #[getter]
    fn age_seconds(&self) -> f64 {
        self.inner.age_seconds()
    }

    /// True when the budget is spent.
    #[getter]
    fn exhausted(&self) -> bool {
        self.inner.exhausted()
    }

    fn __repr__(&self) -> String {
        format!(
            "<DataKey fingerprint={} messages_used={}/{}>",
            self.fingerprint(),
            self.inner.messages_used(),
            self.inner.limits().max_messages
        )
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "DataKey cannot be pickled: key material stays in memory",
        ))
    }

    fn __copy__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("DataKey cannot be copied"))
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err("DataKey cannot be copied"))
    }
}

/// An HMAC-SHA256 key for one blind-index purpose.
#[pyclass(frozen, name = "BlindIndexKey", module = "greenlang_crypto._core")]
pub struct PyBlindIndexKey {
    inner: BlindIndexKey,
}

#[pymethods]
impl PyBlindIndexKey {
    /// Computes the index of `value`, truncated to `length` bytes (4-32).
    #[pyo3(signature = (value, length=32))]
    fn compute<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let v = bytes_arg(value, "value")?;
            Ok(PyBytes::new(py, &self.inner.compute(&v, length).py()?))
        })
    }

    /// Index values of many inputs in one call (a blind-index column of a whole flush):
    /// each is `prefix` (the index key version) followed by the first `length` bytes (1-32)
    /// of the input's MAC. Inputs are bytes-like.
    fn compute_batch<'py>(
        &self,
        py: Python<'py>,
        values: &Bound<'py, PyList>,
        length: usize,
        prefix: u8,
    ) -> PyResult<Bound<'py, PyList>> {
        guard(|| {
            if !(1..=32).contains(&length) {
                return Err(crate::py::errors::to_py(
                    crate::core::Error::InvalidArgument("length must be in 1..32"),
                ));
            }
            let out = PyList::empty(py);
            for value in values.iter() {
                let v = bytes_arg(&value, "value")?;
                // The core computes 4..32 bytes; a shorter index is a prefix of the 4-byte MAC
                // (truncating HMAC output is sound, RFC 2104 section 5).
                let mac = self.inner.compute(&v, length.max(4)).py()?;
                let mut item = Vec::with_capacity(1 + length);
                item.push(prefix);
                item.extend_from_slice(&mac[..length]);
                out.append(PyBytes::new(py, &item))?;
            }
            Ok(out)
        })
    }

    /// Constant-time check that `index` is the index of `value`.
    fn verify(&self, value: &Bound<'_, PyAny>, index: &Bound<'_, PyAny>) -> PyResult<bool> {
        guard(|| {
            Ok(self
                .inner
                .verify(&bytes_arg(value, "value")?, &bytes_arg(index, "index")?))
        })
    }

    fn __repr__(&self) -> &'static str {
        "<BlindIndexKey>"
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("BlindIndexKey cannot be pickled"))
    }
}
