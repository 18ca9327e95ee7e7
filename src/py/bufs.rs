//! Argument and output helpers: zero-copy `bytes` input, copies of mutable buffers, and
//! output written once into a new `bytes` object.

use std::borrow::Cow;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

/// Inputs at least this large are processed with the GIL released. Chosen from
/// benches/bench_core.py: below it, releasing and re-taking the GIL costs more than it saves.
pub const DETACH_THRESHOLD: usize = 16 * 1024;

/// Borrows `bytes` without copying; copies `bytearray` and `memoryview` first, because
/// another thread could mutate them while the GIL is released.
pub fn bytes_arg<'a>(obj: &'a Bound<'_, PyAny>, name: &str) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        let buf = PyBuffer::<u8>::get(obj).map_err(|_| {
            PyTypeError::new_err(format!("{name} must be a contiguous byte buffer"))
        })?;
        return Ok(Cow::Owned(buf.to_vec(obj.py())?));
    }
    Err(PyTypeError::new_err(format!(
        "{name} must be bytes, bytearray or memoryview, not {}",
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into())
    )))
}

/// Like [`bytes_arg`], treating `None` as empty.
pub fn opt_bytes_arg<'a>(obj: Option<&'a Bound<'_, PyAny>>, name: &str) -> PyResult<Cow<'a, [u8]>> {
    match obj {
        None => Ok(Cow::Borrowed(&[])),
        Some(o) if o.is_none() => Ok(Cow::Borrowed(&[])),
        Some(o) => bytes_arg(o, name),
    }
}

/// Allocates a `bytes` of `len` bytes and lets `init` fill it, without zero-filling first
/// (for a 1 MiB result that memset is a measurable share of the AES time).
pub fn new_bytes<'py, F>(py: Python<'py>, len: usize, init: F) -> PyResult<Bound<'py, PyBytes>>
where
    F: FnOnce(&mut [u8]) -> PyResult<()>,
{
    let ssize = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| crate::py::errors::to_py(crate::core::Error::PayloadTooLarge))?;
    // SAFETY: a null source pointer asks CPython for an uninitialised bytes object of `len`
    // bytes; the result is checked for NULL (a MemoryError is then set) before use.
    let raw = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), ssize) };
    if raw.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `raw` is a new, non-null strong reference that we own.
    let obj = unsafe { Bound::from_owned_ptr(py, raw) };
    // SAFETY: the object is a bytes object of exactly `len` bytes that nothing else can see
    // yet, so writing through this slice cannot race or break immutability for any reader.
    let buf =
        unsafe { std::slice::from_raw_parts_mut(ffi::PyBytes_AsString(raw).cast::<u8>(), len) };
    match init(buf) {
        Ok(()) => Ok(obj.cast_into::<PyBytes>().map_err(PyErr::from)?),
        Err(e) => {
            // Do not leave half-written (possibly unauthenticated) plaintext in freed memory.
            zeroize::Zeroize::zeroize(buf);
            Err(e)
        }
    }
}

/// Runs `f` with the GIL released when `size` is at least the threshold.
pub fn maybe_detach<T, F>(py: Python<'_>, size: usize, f: F) -> T
where
    F: pyo3::marker::Ungil + FnOnce() -> T,
    T: pyo3::marker::Ungil,
{
    if size >= DETACH_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}
