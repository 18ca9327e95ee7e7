//! Branch-key bindings: derive DEKs from an unwrapped branch key, in Rust.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::core::{branch, envelope};
use crate::py::bufs::bytes_arg;
use crate::py::envelope::PyEnvelopeSealer;
use crate::py::errors::{guard, CoreResultExt};
use crate::py::keys::{limits, PyDataKey};

/// A sealer for `context` under a DEK freshly derived from `branch_key` (new random salt).
///
/// Its envelopes carry the branch key reference (`branch_id`, salt) and `key_version`, in
/// envelope format `format_version` (2 by default; 1 only for readers that predate v2).
#[pyfunction]
#[pyo3(signature = (branch_key, *, branch_id, key_version, context, max_messages=None,
                    max_bytes=None, format_version=2))]
pub fn branch_sealer(
    branch_key: &PyDataKey,
    branch_id: u32,
    key_version: u32,
    context: &Bound<'_, PyAny>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    format_version: u8,
) -> PyResult<PyEnvelopeSealer> {
    guard(|| {
        let ctx = bytes_arg(context, "context")?;
        let sealer = branch::new_sealer(
            &branch_key.inner,
            branch_id,
            key_version,
            &ctx,
            limits(max_messages, max_bytes)?,
            format_version,
        )
        .py()?;
        Ok(PyEnvelopeSealer {
            inner: Arc::new(sealer),
        })
    })
}

/// The DEK a branch envelope was sealed with, derived again from its branch key.
///
/// Raises `InvalidArgumentError` when the envelope has no branch key reference.
#[pyfunction]
#[pyo3(signature = (branch_key, envelope, context, *, max_messages=None, max_bytes=None))]
pub fn branch_data_key(
    branch_key: &PyDataKey,
    envelope: &Bound<'_, PyAny>,
    context: &Bound<'_, PyAny>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
) -> PyResult<PyDataKey> {
    guard(|| {
        let env = bytes_arg(envelope, "envelope")?;
        let ctx = bytes_arg(context, "context")?;
        let parsed = envelope::parse(&env).py()?;
        let dek = branch::dek_for(
            &parsed,
            &branch_key.inner,
            &ctx,
            limits(max_messages, max_bytes)?,
        )
        .py()?;
        Ok(PyDataKey::wrap(Arc::new(dek)))
    })
}

/// The decryption-cache id of the DEK `envelope` refers to when opened under `context`.
///
/// For stored and inline references it equals `EnvelopeHeader.key_ref_id`; for branch
/// references it also covers the context, because the derived DEK depends on it.
#[pyfunction]
pub fn dek_cache_id<'py>(
    py: Python<'py>,
    envelope: &Bound<'py, PyAny>,
    context: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(|| {
        let env = bytes_arg(envelope, "envelope")?;
        let ctx = bytes_arg(context, "context")?;
        let parsed = envelope::parse(&env).py()?;
        Ok(envelope::with_key_ref_id(&parsed, &ctx, |id| {
            PyBytes::new(py, id)
        }))
    })
}

/// Branch-key counters kept in Rust atomics: ``{"derivations": n}``.
#[pyfunction]
pub fn branch_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("derivations", branch::derivations())?;
    Ok(d)
}
