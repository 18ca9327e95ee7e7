//! Caller-nonce AES-256-GCM with `cryptography`'s `AESGCM` calling convention (interop, KATs).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::core::aead::hazmat::CallerNonceAead;
use crate::core::aead::TAG_LEN;
use crate::core::Error;
use crate::py::bufs::{bytes_arg, maybe_detach, new_bytes, opt_bytes_arg};
use crate::py::errors::{guard, to_py, CoreResultExt};
use crate::py::keys::PyDataKey;

/// AES-256-GCM under a caller key and nonce. Reusing a nonce under one key is catastrophic.
#[pyclass(frozen, name = "AESGCM", module = "greenlang_crypto._core")]
pub struct PyAesGcm {
    inner: CallerNonceAead,
}

#[pymethods]
impl PyAesGcm {
    #[new]
    fn new(key: &Bound<'_, PyAny>) -> PyResult<Self> {
        guard(|| {
            let k = zeroize::Zeroizing::new(bytes_arg(key, "key")?.into_owned());
            Ok(PyAesGcm {
                inner: CallerNonceAead::new(&k).py()?,
            })
        })
    }

    /// Returns `ciphertext || tag`.
    #[pyo3(signature = (nonce, data, associated_data))]
    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        nonce: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let n = bytes_arg(nonce, "nonce")?;
            let d = bytes_arg(data, "data")?;
            let a = opt_bytes_arg(associated_data, "associated_data")?;
            let len = d
                .len()
                .checked_add(TAG_LEN)
                .ok_or_else(|| to_py(Error::PayloadTooLarge))?;
            new_bytes(py, len, |out| {
                maybe_detach(py, d.len(), || self.inner.encrypt_into(&n, &d, &a, out)).py()
            })
        })
    }

    /// Decrypts `ciphertext || tag`; raises `DecryptionError` on any authentication failure.
    #[pyo3(signature = (nonce, data, associated_data))]
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        nonce: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let n = bytes_arg(nonce, "nonce")?;
            let d = bytes_arg(data, "data")?;
            let a = opt_bytes_arg(associated_data, "associated_data")?;
            if n.len() != 12 {
                return Err(to_py(Error::InvalidNonce));
            }
            let len = d
                .len()
                .checked_sub(TAG_LEN)
                .ok_or_else(|| to_py(Error::Authentication))?;
            new_bytes(py, len, |out| {
                maybe_detach(py, d.len(), || self.inner.decrypt_into(&n, &d, &a, out)).py()
            })
        })
    }

    fn __repr__(&self) -> &'static str {
        "<AESGCM>"
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "AESGCM cannot be pickled",
        ))
    }
}

/// Returns the raw bytes of a data key. The one audited export path: used to write the local
/// master key file and by known-answer tests.
#[pyfunction]
pub fn export_key_bytes<'py>(py: Python<'py>, key: &PyDataKey) -> Bound<'py, PyBytes> {
    key.inner.with_secret(|s| PyBytes::new(py, s))
}
