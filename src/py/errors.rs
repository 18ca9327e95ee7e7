//! The one place where core errors become Python exceptions, and the panic guard.

use pyo3::prelude::*;
use pyo3::PyErr;

use crate::core::Error;

pyo3::import_exception!(greenlang_crypto.exceptions, DecryptionError);
pyo3::import_exception!(greenlang_crypto.exceptions, InvalidEnvelopeError);
pyo3::import_exception!(greenlang_crypto.exceptions, UnsupportedFormatError);
pyo3::import_exception!(greenlang_crypto.exceptions, KeyUsageExceededError);
pyo3::import_exception!(greenlang_crypto.exceptions, PayloadTooLargeError);
pyo3::import_exception!(greenlang_crypto.exceptions, InvalidKeyError);
pyo3::import_exception!(greenlang_crypto.exceptions, InvalidArgumentError);
pyo3::import_exception!(greenlang_crypto.exceptions, InvalidContextError);
pyo3::import_exception!(greenlang_crypto.exceptions, InternalError);

/// Converts a core error into the matching exception from `greenlang_crypto.exceptions`.
pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Authentication => DecryptionError::new_err(msg),
        Error::Malformed(_) => InvalidEnvelopeError::new_err(msg),
        Error::UnsupportedVersion(_) | Error::UnsupportedAlgorithm(_) => {
            UnsupportedFormatError::new_err(msg)
        }
        Error::KeyUsageExceeded => KeyUsageExceededError::new_err(msg),
        Error::PayloadTooLarge => PayloadTooLargeError::new_err(msg),
        Error::InvalidKey(_) => InvalidKeyError::new_err(msg),
        Error::InvalidNonce | Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        Error::InvalidContext(_) => InvalidContextError::new_err(msg),
        Error::Crypto => InternalError::new_err(msg),
    }
}

/// Runs `f`, turning a Rust panic into `InternalError` so that no `PanicException` (a
/// `BaseException` that `except Exception` would not catch) ever reaches Python code.
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(InternalError::new_err(
            "internal error in the cryptographic core",
        )),
    }
}

/// Shorthand: map a core result.
pub trait CoreResultExt<T> {
    /// Maps the error with [`to_py`].
    fn py(self) -> PyResult<T>;
}

impl<T> CoreResultExt<T> for crate::core::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
