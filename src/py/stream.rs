//! Stream format v1 for Python: an encryptor and a decryptor that seal and open runs of
//! segments into caller-supplied buffers with the GIL released (see `crate::core::stream`).

use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::core::stream::{self, Decryptor, Encryptor, PREFIX_LEN, SALT_LEN};
use crate::core::Error;
use crate::py::bufs::{bytes_arg, maybe_detach, new_bytes, opt_bytes_arg};
use crate::py::errors::{guard, to_py, CoreResultExt};
use crate::py::keys::PyDataKey;

/// A contiguous byte buffer borrowed from a Python object for the length of one call.
///
/// The `PyBuffer` export stays alive while the slice is used, which keeps a `bytearray` from
/// being resized or freed; callers must not mutate the buffers from another thread meanwhile
/// (the same contract as `cryptography`'s `encrypt_into`).
struct Borrowed {
    buf: PyBuffer<u8>,
}

impl Borrowed {
    fn get(obj: &Bound<'_, PyAny>, name: &str, writable: bool) -> PyResult<Self> {
        let buf = PyBuffer::<u8>::get(obj).map_err(|_| {
            PyTypeError::new_err(format!("{name} must be a contiguous byte buffer"))
        })?;
        if !buf.is_c_contiguous() {
            return Err(PyBufferError::new_err(format!("{name} must be contiguous")));
        }
        if writable && buf.readonly() {
            return Err(PyTypeError::new_err(format!(
                "{name} must be a writable buffer"
            )));
        }
        Ok(Borrowed { buf })
    }

    fn range(&self) -> (usize, usize) {
        let start = self.buf.buf_ptr() as usize;
        (start, start + self.buf.len_bytes())
    }

    /// # Safety
    /// The slice must not outlive `self`, and no other slice of the same memory may be live.
    unsafe fn slice(&self) -> &[u8] {
        // SAFETY: the export guarantees `len_bytes` valid, contiguous bytes at `buf_ptr` for
        // as long as `self.buf` lives (the caller keeps the slice within that lifetime).
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr().cast::<u8>(), self.buf.len_bytes()) }
    }

    /// # Safety
    /// As [`Borrowed::slice`]; the buffer was checked writable in [`Borrowed::get`].
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self) -> &mut [u8] {
        // SAFETY: as in `slice`, and the exporter declared the memory writable.
        unsafe {
            std::slice::from_raw_parts_mut(self.buf.buf_ptr().cast::<u8>(), self.buf.len_bytes())
        }
    }
}

fn disjoint(a: &Borrowed, b: &Borrowed) -> PyResult<()> {
    let (x0, x1) = a.range();
    let (y0, y1) = b.range();
    if x0 < y1 && y0 < x1 {
        return Err(to_py(Error::InvalidArgument(
            "input and output buffers must not overlap",
        )));
    }
    Ok(())
}

fn threads_arg(threads: usize) -> PyResult<usize> {
    if threads == 0 || threads > 64 {
        return Err(to_py(Error::InvalidArgument("threads must be in 1..=64")));
    }
    Ok(threads)
}

/// Seals one stream, run of segments by run of segments. Made by the service, which supplies
/// the DEK and its key reference; it never takes a nonce.
#[pyclass(frozen, name = "StreamEncryptor", module = "greenlang_crypto._core")]
pub struct PyStreamEncryptor {
    inner: Mutex<Encryptor>,
    header: Vec<u8>,
    segment_size: usize,
}

impl PyStreamEncryptor {
    fn locked(&self) -> PyResult<std::sync::MutexGuard<'_, Encryptor>> {
        self.inner
            .lock()
            .map_err(|_| to_py(Error::InvalidArgument("the stream failed earlier")))
    }
}

#[pymethods]
impl PyStreamEncryptor {
    /// Starts a stream under `key`; `key_ref` is the envelope header naming that key.
    #[new]
    #[pyo3(signature = (key, key_ref, context, associated_data=None, *,
                        segment_size=stream::DEFAULT_SEGMENT))]
    fn new(
        key: &PyDataKey,
        key_ref: &Bound<'_, PyAny>,
        context: &Bound<'_, PyAny>,
        associated_data: Option<&Bound<'_, PyAny>>,
        segment_size: usize,
    ) -> PyResult<Self> {
        guard(|| {
            let enc = Encryptor::new(
                &key.inner,
                &bytes_arg(key_ref, "key_ref")?,
                &bytes_arg(context, "context")?,
                &opt_bytes_arg(associated_data, "associated_data")?,
                segment_size,
            )
            .py()?;
            Ok(Self::wrap(enc))
        })
    }

    /// The stream header (written before the first segment).
    #[getter]
    fn header<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.header)
    }

    /// Plaintext bytes per segment.
    #[getter]
    fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// True once the final segment is sealed.
    #[getter]
    fn finished(&self) -> PyResult<bool> {
        Ok(self.locked()?.finished())
    }

    /// Sealed length of a run of `plaintext_len` bytes.
    #[pyo3(signature = (plaintext_len, last))]
    fn sealed_len(&self, plaintext_len: usize, last: bool) -> PyResult<usize> {
        self.locked()?.sealed_len(plaintext_len, last).py()
    }

    /// Seals the next run of segments from `plaintext` into `out` (exactly
    /// `sealed_len(len(plaintext), last)` bytes); returns the bytes written.
    #[pyo3(signature = (plaintext, out, last, threads=1))]
    fn seal_into(
        &self,
        py: Python<'_>,
        plaintext: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        last: bool,
        threads: usize,
    ) -> PyResult<usize> {
        guard(|| {
            let threads = threads_arg(threads)?;
            let input = Borrowed::get(plaintext, "plaintext", false)?;
            let output = Borrowed::get(out, "out", true)?;
            disjoint(&input, &output)?;
            // SAFETY: both exports live until the end of this call; the ranges are disjoint.
            let (src, dst) = unsafe { (input.slice(), output.slice_mut()) };
            let n = dst.len();
            let mut held = self.locked()?;
            // A plain `&mut` (Send) crosses the GIL release; the guard stays on this thread.
            let enc: &mut Encryptor = &mut held;
            maybe_detach(py, src.len(), || enc.seal_run(src, dst, last, threads)).py()?;
            Ok(n)
        })
    }

    /// Seals the next run of segments into a new `bytes`.
    #[pyo3(signature = (plaintext, last, threads=1))]
    fn seal<'py>(
        &self,
        py: Python<'py>,
        plaintext: &Bound<'py, PyAny>,
        last: bool,
        threads: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let threads = threads_arg(threads)?;
            let src = bytes_arg(plaintext, "plaintext")?;
            let mut held = self.locked()?;
            let enc: &mut Encryptor = &mut held;
            let len = enc.sealed_len(src.len(), last).py()?;
            new_bytes(py, len, |dst| {
                maybe_detach(py, src.len(), || enc.seal_run(&src, dst, last, threads)).py()
            })
        })
    }

    fn __repr__(&self) -> String {
        format!("<StreamEncryptor segment_size={}>", self.segment_size)
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("StreamEncryptor cannot be pickled"))
    }
}

impl PyStreamEncryptor {
    fn wrap(enc: Encryptor) -> Self {
        PyStreamEncryptor {
            header: enc.header().to_vec(),
            segment_size: enc.segment_size(),
            inner: Mutex::new(enc),
        }
    }
}

/// Opens the segments of one stream after its header tag verified; any segment opens alone.
#[pyclass(frozen, name = "StreamDecryptor", module = "greenlang_crypto._core")]
pub struct PyStreamDecryptor {
    inner: Decryptor,
}

#[pymethods]
impl PyStreamDecryptor {
    /// Verifies `header` under `key`, the context and the associated data.
    #[new]
    #[pyo3(signature = (key, header, context, associated_data=None))]
    fn new(
        key: &PyDataKey,
        header: &Bound<'_, PyAny>,
        context: &Bound<'_, PyAny>,
        associated_data: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        guard(|| {
            Ok(PyStreamDecryptor {
                inner: Decryptor::new(
                    &key.inner,
                    &bytes_arg(header, "header")?,
                    &bytes_arg(context, "context")?,
                    &opt_bytes_arg(associated_data, "associated_data")?,
                )
                .py()?,
            })
        })
    }

    /// Plaintext bytes per segment.
    #[getter]
    fn segment_size(&self) -> usize {
        self.inner.segment_size()
    }

    /// Header length.
    #[getter]
    fn header_len(&self) -> usize {
        self.inner.header_len()
    }

    /// Plaintext length of a sealed run (`DecryptionError` for an impossible length).
    #[pyo3(signature = (sealed_len, last))]
    fn opened_len(&self, sealed_len: usize, last: bool) -> PyResult<usize> {
        self.inner.opened_len(sealed_len, last).py()
    }

    /// Opens the run starting at segment `first` into `out`; returns the bytes written. On
    /// failure `out` is zeroized.
    #[pyo3(signature = (first, sealed, out, last, threads=1))]
    fn open_into(
        &self,
        py: Python<'_>,
        first: u64,
        sealed: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        last: bool,
        threads: usize,
    ) -> PyResult<usize> {
        guard(|| {
            let threads = threads_arg(threads)?;
            let input = Borrowed::get(sealed, "sealed", false)?;
            let output = Borrowed::get(out, "out", true)?;
            disjoint(&input, &output)?;
            // SAFETY: both exports live until the end of this call; the ranges are disjoint.
            let (src, dst) = unsafe { (input.slice(), output.slice_mut()) };
            let n = dst.len();
            let dec = &self.inner;
            maybe_detach(py, src.len(), || {
                dec.open_run(first, src, dst, last, threads)
            })
            .py()?;
            Ok(n)
        })
    }

    /// Opens the run starting at segment `first` into a new `bytes`.
    #[pyo3(signature = (first, sealed, last, threads=1))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        first: u64,
        sealed: &Bound<'py, PyAny>,
        last: bool,
        threads: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard(|| {
            let threads = threads_arg(threads)?;
            let src = bytes_arg(sealed, "sealed")?;
            let dec = &self.inner;
            let len = dec.opened_len(src.len(), last).py()?;
            new_bytes(py, len, |dst| {
                maybe_detach(py, src.len(), || {
                    dec.open_run(first, &src, dst, last, threads)
                })
                .py()
            })
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<StreamDecryptor segment_size={}>",
            self.inner.segment_size()
        )
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("StreamDecryptor cannot be pickled"))
    }
}

/// Public fields of a stream header (nothing secret).
#[pyclass(frozen, name = "StreamHeader", module = "greenlang_crypto._core")]
pub struct PyStreamHeader {
    #[pyo3(get)]
    segment_size: usize,
    #[pyo3(get)]
    header_len: usize,
    key_ref: Vec<u8>,
}

#[pymethods]
impl PyStreamHeader {
    /// The embedded key reference as an empty-bodied envelope, which `parse_envelope` and the
    /// service's key resolution accept.
    #[getter]
    fn key_envelope<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &stream::key_ref_envelope(&self.key_ref))
    }

    fn __repr__(&self) -> String {
        format!(
            "<StreamHeader segment_size={} header_len={}>",
            self.segment_size, self.header_len
        )
    }
}

/// Overwrites a writable buffer (a `bytearray`, a writable `memoryview`) with zeros, in a way
/// the compiler may not elide; used on plaintext buffers before they are dropped.
#[pyfunction]
pub fn wipe_buffer(buffer: &Bound<'_, PyAny>) -> PyResult<()> {
    let b = Borrowed::get(buffer, "buffer", true)?;
    // SAFETY: the only slice of this export, used within its lifetime; the GIL is held, so no
    // Python code resizes or frees the buffer meanwhile.
    zeroize::Zeroize::zeroize(unsafe { b.slice_mut() });
    Ok(())
}

/// Header length announced by the first 10 bytes of a stream.
#[pyfunction]
pub fn stream_header_len(prefix: &Bound<'_, PyAny>) -> PyResult<usize> {
    guard(|| stream::header_len(&bytes_arg(prefix, "prefix")?).py())
}

/// Parses the header at the start of `data` (without verifying it: that needs the key).
#[pyfunction]
pub fn parse_stream_header(data: &Bound<'_, PyAny>) -> PyResult<PyStreamHeader> {
    guard(|| {
        let bytes = bytes_arg(data, "data")?;
        let h = stream::parse_header(&bytes).py()?;
        Ok(PyStreamHeader {
            segment_size: h.segment_size,
            header_len: h.bytes.len(),
            key_ref: h.key_ref.to_vec(),
        })
    })
}

/// `(plaintext length, segment count)` of a stream of `total_len` bytes; `DecryptionError`
/// when no stream can have that length.
#[pyfunction]
pub fn stream_plaintext_len<'py>(
    py: Python<'py>,
    header_len: usize,
    segment_size: usize,
    total_len: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    guard(|| {
        let (n, segs) = stream::plaintext_len(header_len, segment_size, total_len).py()?;
        PyTuple::new(py, [n, segs])
    })
}

/// Total length of a stream of `plaintext_len` bytes.
#[pyfunction]
pub fn stream_len(header_len: usize, segment_size: usize, plaintext_len: u64) -> PyResult<u64> {
    guard(|| stream::stream_len(header_len, segment_size, plaintext_len).py())
}

/// Known-answer vectors only: an encryptor with a given salt and nonce prefix. Reusing them
/// under one key reuses nonces; nothing outside the golden-vector tests may call this.
#[pyfunction]
#[pyo3(signature = (key, key_ref, context, associated_data, segment_size, salt, prefix))]
pub fn hazmat_stream_encryptor(
    key: &PyDataKey,
    key_ref: &Bound<'_, PyAny>,
    context: &Bound<'_, PyAny>,
    associated_data: &Bound<'_, PyAny>,
    segment_size: usize,
    salt: &Bound<'_, PyAny>,
    prefix: &Bound<'_, PyAny>,
) -> PyResult<PyStreamEncryptor> {
    guard(|| {
        let salt: [u8; SALT_LEN] = bytes_arg(salt, "salt")?
            .as_ref()
            .try_into()
            .map_err(|_| to_py(Error::InvalidArgument("salt must be 32 bytes")))?;
        let prefix: [u8; PREFIX_LEN] = bytes_arg(prefix, "prefix")?
            .as_ref()
            .try_into()
            .map_err(|_| to_py(Error::InvalidArgument("prefix must be 7 bytes")))?;
        let enc = Encryptor::with_randomness(
            &key.inner,
            &bytes_arg(key_ref, "key_ref")?,
            &bytes_arg(context, "context")?,
            &bytes_arg(associated_data, "associated_data")?,
            segment_size,
            salt,
            prefix,
        )
        .py()?;
        Ok(PyStreamEncryptor::wrap(enc))
    })
}
