//! PyO3 bindings: thin wrappers over `crate::core`, compiled only with the `python` feature.

mod branch;
mod bufs;
mod cache;
mod clock;
mod envelope;
pub(crate) mod errors;
mod hazmat;
mod keys;
mod stream;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::py::bufs::bytes_arg;

/// Constant-time equality of two byte strings.
#[pyfunction]
fn constant_time_eq(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    errors::guard(|| {
        Ok(crate::core::index::constant_time_eq(
            &bytes_arg(a, "a")?,
            &bytes_arg(b, "b")?,
        ))
    })
}

/// Process-wide operation counters kept in Rust atomics (read by the metrics collector).
#[pyfunction]
fn core_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = crate::core::stats::snapshot();
    let d = PyDict::new(py);
    d.set_item("seals", s.seals)?;
    d.set_item("sealed_bytes", s.sealed_bytes)?;
    d.set_item("opens", s.opens)?;
    d.set_item("opened_bytes", s.opened_bytes)?;
    d.set_item("open_auth_failures", s.open_auth_failures)?;
    d.set_item("open_format_failures", s.open_format_failures)?;
    d.set_item("usage_refusals", s.usage_refusals)?;
    Ok(d)
}

/// Data keys (DEKs, master and index root keys) alive in this process, in any holder.
#[pyfunction]
fn live_data_keys() -> u64 {
    crate::core::stats::live_data_keys()
}

/// Random bytes from the kernel's generator (for ids and salts; never for nonces of this library,
/// which are drawn inside the seal call).
#[pyfunction]
fn random_bytes(py: Python<'_>, n: usize) -> PyResult<Bound<'_, PyBytes>> {
    if n > 1024 {
        return Err(errors::to_py(crate::core::Error::InvalidArgument(
            "at most 1024 random bytes",
        )));
    }
    bufs::new_bytes(py, n, |out| {
        crate::core::osrand::fill(out).map_err(|_| errors::to_py(crate::core::Error::Crypto))
    })
}

/// The monotonic clock (coarse, millisecond resolution) that DEK caches and their fences
/// use unless built on a `ManualClock`, in nanoseconds. It keeps running while the process
/// is stopped.
#[pyfunction]
fn monotonic_ns() -> u64 {
    crate::core::clock::monotonic_ns()
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FORMAT_VERSION", crate::core::envelope::VERSION_2)?;
    m.add("MAX_MESSAGES_CAP", crate::core::aead::MAX_MESSAGES_CAP)?;
    m.add("GCM_MAX_PLAINTEXT", crate::core::aead::GCM_MAX_PLAINTEXT)?;
    m.add("DETACH_THRESHOLD", bufs::DETACH_THRESHOLD)?;
    m.add("OVERHEAD", crate::core::aead::OVERHEAD)?;
    m.add("ENVELOPE_MAGIC", crate::core::envelope::MAGIC)?;
    m.add("ALG_AES_256_GCM", crate::core::envelope::ALG_AES_256_GCM)?;
    m.add("KIND_INLINE", crate::core::envelope::KIND_INLINE)?;
    m.add("KIND_STORED", crate::core::envelope::KIND_STORED)?;
    m.add("KIND_BRANCH", crate::core::envelope::KIND_BRANCH)?;
    m.add("BRANCH_SALT_LEN", crate::core::envelope::BRANCH_SALT_LEN)?;
    m.add_function(wrap_pyfunction!(branch::branch_sealer, m)?)?;
    m.add_function(wrap_pyfunction!(branch::branch_data_key, m)?)?;
    m.add_function(wrap_pyfunction!(branch::dek_cache_id, m)?)?;
    m.add_function(wrap_pyfunction!(branch::branch_stats, m)?)?;
    m.add("MAX_PROVIDER_LEN", crate::core::envelope::MAX_PROVIDER_LEN)?;
    m.add("MAX_KEY_ID_LEN", crate::core::envelope::MAX_KEY_ID_LEN)?;
    m.add("MAX_WRAPPED_LEN", crate::core::envelope::MAX_WRAPPED_LEN)?;
    m.add_class::<keys::PyDataKey>()?;
    m.add_class::<keys::PyBlindIndexKey>()?;
    m.add_class::<envelope::PyEnvelopeHeader>()?;
    m.add_class::<envelope::PyEnvelopeSealer>()?;
    m.add_class::<cache::PyDekCache>()?;
    m.add_class::<clock::PyManualClock>()?;
    m.add_class::<cache::PyCachedOpener>()?;
    m.add_class::<cache::PyCachedSealer>()?;
    m.add_class::<cache::PyCacheSlot>()?;
    m.add_class::<hazmat::PyAesGcm>()?;
    m.add_class::<stream::PyStreamEncryptor>()?;
    m.add_class::<stream::PyStreamDecryptor>()?;
    m.add_class::<stream::PyStreamHeader>()?;
    m.add_function(wrap_pyfunction!(stream::stream_header_len, m)?)?;
    m.add_function(wrap_pyfunction!(stream::wipe_buffer, m)?)?;
    m.add_function(wrap_pyfunction!(stream::parse_stream_header, m)?)?;
    m.add_function(wrap_pyfunction!(stream::stream_plaintext_len, m)?)?;
    m.add_function(wrap_pyfunction!(stream::stream_len, m)?)?;
    m.add_function(wrap_pyfunction!(stream::hazmat_stream_encryptor, m)?)?;
    m.add("STREAM_MAGIC", crate::core::stream::MAGIC)?;
    m.add("STREAM_FORMAT_VERSION", crate::core::stream::VERSION_1)?;
    m.add("STREAM_MIN_SEGMENT", crate::core::stream::MIN_SEGMENT)?;
    m.add("STREAM_MAX_SEGMENT", crate::core::stream::MAX_SEGMENT)?;
    m.add(
        "STREAM_DEFAULT_SEGMENT",
        crate::core::stream::DEFAULT_SEGMENT,
    )?;
    m.add("STREAM_FIXED_LEN", crate::core::stream::FIXED_LEN)?;
    m.add_function(wrap_pyfunction!(envelope::canonical_context, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::context_digest, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::parse_envelope, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::open_envelope, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::stored_key_ref_id, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::inline_key_ref_id, m)?)?;
    m.add_function(wrap_pyfunction!(hazmat::export_key_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(constant_time_eq, m)?)?;
    m.add_function(wrap_pyfunction!(core_stats, m)?)?;
    m.add_function(wrap_pyfunction!(live_data_keys, m)?)?;
    m.add_function(wrap_pyfunction!(random_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(monotonic_ns, m)?)?;
    Ok(())
}
