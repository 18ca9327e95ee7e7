//! Envelope functions and classes: canonical contexts, header parsing, sealing and opening.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::core::envelope::{self, HeaderSpec, KeyRef, Sealer};
use crate::core::{context, Error};
use crate::py::bufs::{bytes_arg, maybe_detach, new_bytes, opt_bytes_arg};
use crate::py::errors::{guard, to_py, CoreResultExt, InvalidContextError};
use crate::py::keys::PyDataKey;

fn str_of<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, str>> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| InvalidContextError::new_err("context keys and values must be str"))?;
    // A lone surrogate cannot be encoded as UTF-8; report it as a context error (not a
    // UnicodeEncodeError that would echo the offending string).
    s.to_cow()
        .map_err(|_| InvalidContextError::new_err("context strings must be valid Unicode"))
}

/// Encodes a mapping of str to str canonically. `None` and `{}` both give the empty context.
#[pyfunction]
#[pyo3(signature = (context=None))]
pub fn canonical_context<'py>(
    py: Python<'py>,
    context: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(|| {
        let Some(ctx) = context.filter(|c| !c.is_none()) else {
            return Ok(PyBytes::new(py, &context::encode([]).py()?));
        };
        let dict = ctx
            .cast::<PyDict>()
            .map_err(|_| InvalidContextError::new_err("context must be a dict of str to str"))?;
        if dict.len() > context::MAX_CONTEXT_LEN / 4 {
            return Err(to_py(Error::InvalidContext("too many entries")));
        }
        let mut owned: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> =
            Vec::with_capacity(dict.len());
        let items: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = dict.iter().collect();
        for (k, v) in &items {
            owned.push((str_of(k)?, str_of(v)?));
        }
        let enc = context::encode(owned.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))).py()?;
        Ok(PyBytes::new(py, &enc))
    })
}

/// SHA-256 of a canonical context (what audit records keep instead of raw values).
#[pyfunction]
pub fn context_digest<'py>(
    py: Python<'py>,
    canonical: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(|| {
        Ok(PyBytes::new(
            py,
            &context::digest(&bytes_arg(canonical, "canonical")?),
        ))
    })
}

/// The public header of an envelope, as parsed without any key.
#[pyclass(
    frozen,
    get_all,
    name = "EnvelopeHeader",
    module = "greenlang_crypto._core"
)]
pub struct PyEnvelopeHeader {
    /// Format version.
    version: u8,
    /// Algorithm id.
    algorithm: u8,
    /// Key version of the keyring.
    key_version: u32,
    /// "inline", "stored" or "branch".
    kind: &'static str,
    /// Provider name (inline only).
    provider: Option<String>,
    /// Wrapping key id (inline only).
    key_id: Option<String>,
    /// Wrapped DEK (inline only; ciphertext, not secret).
    wrapped_dek: Option<Py<PyBytes>>,
    /// Key-store DEK id (stored only).
    dek_id: Option<u64>,
    /// Key-store branch key id (branch only).
    branch_id: Option<u32>,
    /// SHA-256 of the canonical context, if present.
    context_digest: Option<Py<PyBytes>>,
    /// Whether the header carries a key commitment.
    has_commitment: bool,
    /// Header length in bytes.
    header_len: usize,
    /// Plaintext length in bytes.
    plaintext_len: usize,
    /// Cache id of the DEK this envelope uses.
    key_ref_id: Py<PyBytes>,
}

#[pymethods]
impl PyEnvelopeHeader {
    fn __repr__(&self) -> String {
        format!(
            "<EnvelopeHeader v{} kind={} key_version={} key_id={:?} dek_id={:?} plaintext_len={}>",
            self.version, self.kind, self.key_version, self.key_id, self.dek_id, self.plaintext_len
        )
    }
}

/// Parses an envelope header; raises `InvalidEnvelopeError` or `UnsupportedFormatError`.
#[pyfunction]
pub fn parse_envelope(py: Python<'_>, envelope: &Bound<'_, PyAny>) -> PyResult<PyEnvelopeHeader> {
    guard(|| {
        let env = bytes_arg(envelope, "envelope")?;
        let p = envelope::parse(&env).py()?;
        let branch_id = match p.key_ref {
            KeyRef::Branch { branch_id, .. } => Some(branch_id),
            _ => None,
        };
        let (kind, provider, key_id, wrapped_dek, dek_id) = match p.key_ref {
            KeyRef::Inline {
                provider,
                key_id,
                wrapped_dek,
            } => (
                "inline",
                Some(provider.to_owned()),
                Some(key_id.to_owned()),
                Some(PyBytes::new(py, wrapped_dek).unbind()),
                None,
            ),
            KeyRef::Stored { dek_id } => ("stored", None, None, None, Some(dek_id)),
            KeyRef::Branch { .. } => ("branch", None, None, None, None),
        };
        Ok(PyEnvelopeHeader {
            version: p.version,
            algorithm: p.algorithm,
            key_version: p.key_version,
            kind,
            provider,
            key_id,
            wrapped_dek,
            dek_id,
            branch_id,
            context_digest: p.context_digest.map(|d| PyBytes::new(py, d).unbind()),
            has_commitment: p.commitment.is_some(),
            header_len: p.header.len(),
            plaintext_len: p.plaintext_len(),
            key_ref_id: PyBytes::new(py, &envelope::key_ref_id(&p)).unbind(),
        })
    })
}

/// Cache id of a stored DEK (matches `EnvelopeHeader.key_ref_id`).
#[pyfunction]
pub fn stored_key_ref_id(py: Python<'_>, dek_id: u64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &envelope::stored_id(dek_id))
}

/// Cache id of an inline wrapped DEK (matches `EnvelopeHeader.key_ref_id`).
#[pyfunction]
pub fn inline_key_ref_id<'py>(
    py: Python<'py>,
    provider: &str,
    key_id: &str,
    wrapped_dek: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(
        py,
        &envelope::inline_id(provider, key_id, &bytes_arg(wrapped_dek, "wrapped_dek")?),
    ))
}

pub(crate) fn open_parsed<'py>(
    py: Python<'py>,
    key: &crate::core::aead::DataKey,
    env: &[u8],
    ctx: &[u8],
    aad: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let p = envelope::parse(env).py()?;
    new_bytes(py, p.plaintext_len(), |out| {
        maybe_detach(py, env.len(), || {
            envelope::open_into(key, &p, ctx, aad, out)
        })
        .py()
    })
}

/// Opens an envelope with `key`, the expected canonical context and associated data.
#[pyfunction]
#[pyo3(signature = (key, envelope, context, associated_data=None))]
pub fn open_envelope<'py>(
    py: Python<'py>,
    key: &PyDataKey,
    envelope: &Bound<'py, PyAny>,
    context: &Bound<'py, PyAny>,
    associated_data: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(|| {
        let env = bytes_arg(envelope, "envelope")?;
        let ctx = bytes_arg(context, "context")?;
        let aad = opt_bytes_arg(associated_data, "associated_data")?;
        open_parsed(py, &key.inner, &env, &ctx, &aad)
    })
}

/// A data key bound to one envelope header and one context; seals values quickly.
#[pyclass(frozen, name = "EnvelopeSealer", module = "greenlang_crypto._core")]
pub struct PyEnvelopeSealer {
    pub(crate) inner: Arc<Sealer>,
}

pub(crate) fn seal_with<'py>(
    py: Python<'py>,
    sealer: &Sealer,
    plaintext: &[u8],
    extra: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let len = sealer.envelope_len(plaintext.len()).py()?;
    new_bytes(py, len, |out| {
        maybe_detach(py, plaintext.len(), || {
            sealer.seal_into(extra, plaintext, out, false)
        })
        .py()
    })
}

#[pymethods]
impl PyEnvelopeSealer {
    /// Builds a sealer. Give either `dek_id` (stored reference) or `provider`, `key_id` and
    /// `wrapped_dek` (inline reference). `format_version` is 2 (key-committing, the default)
    /// or 1 (for readers that predate v2).
    #[new]
    #[pyo3(signature = (key, *, key_version, context, dek_id=None, provider=None, key_id=None,
                        wrapped_dek=None, context_digest=false, commitment=false,
                        format_version=2))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        key: &PyDataKey,
        key_version: u32,
        context: &Bound<'_, PyAny>,
        dek_id: Option<u64>,
        provider: Option<&str>,
        key_id: Option<&str>,
        wrapped_dek: Option<&Bound<'_, PyAny>>,
        context_digest: bool,
        commitment: bool,
        format_version: u8,
    ) -> PyResult<Self> {
        guard(|| {
            let ctx = bytes_arg(context, "context")?;
            let wrapped = opt_bytes_arg(wrapped_dek, "wrapped_dek")?;
            let key_ref = match (dek_id, provider, key_id, wrapped_dek.is_some()) {
                (Some(id), None, None, false) => KeyRef::Stored { dek_id: id },
                (None, Some(p), Some(k), true) => KeyRef::Inline {
                    provider: p,
                    key_id: k,
                    wrapped_dek: &wrapped,
                },
                _ => {
                    return Err(to_py(Error::InvalidArgument(
                        "give dek_id, or provider + key_id + wrapped_dek",
                    )))
                }
            };
            let spec = HeaderSpec {
                version: format_version,
                key_version,
                key_ref,
                context_digest,
                commitment,
            };
            Ok(PyEnvelopeSealer {
                inner: Arc::new(Sealer::new(Arc::clone(&key.inner), &spec, &ctx).py()?),
            })
        })
    }

    /// Seals one value; `associated_data` binds it to its location (table, column, row).
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
            seal_with(py, &self.inner, &pt, &aad)
        })
    }

    /// Seals many values with the GIL released. `associated_data` is None, one bytes value
    /// for all, or a list with one entry (bytes or None) per plaintext.
    #[pyo3(signature = (plaintexts, associated_data=None))]
    fn seal_batch<'py>(
        &self,
        py: Python<'py>,
        plaintexts: Vec<Bound<'py, PyAny>>,
        associated_data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        guard(|| {
            let inputs: Vec<_> = plaintexts
                .iter()
                .map(|p| bytes_arg(p, "plaintext"))
                .collect::<PyResult<_>>()?;
            let aads = per_item_aad(associated_data, inputs.len())?;
            let total: u64 = inputs.iter().map(|p| p.len() as u64).sum();
            let sealer = &self.inner;
            sealer
                .key()
                .reserve_batch(inputs.len() as u64, total)
                .py()?;
            let sealed: Vec<Vec<u8>> = py
                .detach(|| {
                    inputs
                        .iter()
                        .zip(aads.iter())
                        .map(|(p, a)| {
                            let mut out = vec![0u8; sealer.envelope_len(p.len())?];
                            sealer.seal_into(a, p, &mut out, true)?;
                            Ok(out)
                        })
                        .collect::<crate::core::Result<_>>()
                })
                .py()?;
            PyList::new(py, sealed.iter().map(|s| PyBytes::new(py, s)))
        })
    }

    /// The header every envelope of this sealer starts with.
    #[getter]
    fn header<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.header())
    }

    /// The data key.
    #[getter]
    fn key(&self) -> PyDataKey {
        PyDataKey::wrap(Arc::clone(self.inner.key()))
    }

    fn __repr__(&self) -> String {
        format!("<EnvelopeSealer header_len={}>", self.inner.header().len())
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "EnvelopeSealer cannot be pickled",
        ))
    }
}

/// Expands an associated-data argument into one entry per item.
pub(crate) fn per_item_aad<'a>(
    associated_data: Option<&'a Bound<'_, PyAny>>,
    n: usize,
) -> PyResult<Vec<std::borrow::Cow<'a, [u8]>>> {
    match associated_data {
        Some(a) if a.is_instance_of::<PyList>() || a.is_instance_of::<pyo3::types::PyTuple>() => {
            let len = a.len()?;
            if len != n {
                return Err(to_py(Error::InvalidArgument(
                    "associated_data list must have one entry per value",
                )));
            }
            // Keep the items alive by borrowing from the list via owned copies: lists are
            // mutable, so each entry is copied unless it is an immutable bytes object.
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let item = a.get_item(i)?;
                if item.is_none() {
                    out.push(std::borrow::Cow::Borrowed(&[][..]));
                } else {
                    out.push(std::borrow::Cow::Owned(
                        bytes_arg(&item, "associated_data")?.into_owned(),
                    ));
                }
            }
            Ok(out)
        }
        other => {
            let one = opt_bytes_arg(other, "associated_data")?;
            Ok(vec![one; n])
        }
    }
}
