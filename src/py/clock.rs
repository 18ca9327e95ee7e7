//! `ManualClock`: a clock for tests, read by the DEK caches and the keyring built on it.

use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::core::clock::{Clock, ManualClock};
use crate::core::Error;
use crate::py::errors::to_py;

/// A monotonic clock that stands still until advanced.
///
/// A `DekCache` (and a keyring) given one reads TTLs, entry ages and fence deadlines from it
/// instead of the system clock, so a test steps past a TTL with `advance` instead of
/// sleeping. Safe to share between threads.
#[pyclass(frozen, name = "ManualClock", module = "greenlang_crypto._core")]
pub struct PyManualClock {
    inner: ManualClock,
}

impl PyManualClock {
    /// The core clock that reads this one.
    pub fn clock(&self) -> Clock {
        self.inner.clock()
    }
}

#[pymethods]
impl PyManualClock {
    #[new]
    #[pyo3(signature = (start_ns=0))]
    fn new(start_ns: u64) -> Self {
        PyManualClock {
            inner: ManualClock::new(start_ns),
        }
    }

    /// The current reading in nanoseconds.
    fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }

    /// Moves the clock forward by `seconds` (finite, not negative).
    fn advance(&self, seconds: f64) -> PyResult<()> {
        let by = Duration::try_from_secs_f64(seconds).map_err(|_| {
            to_py(Error::InvalidArgument(
                "seconds must be finite and not negative",
            ))
        })?;
        self.inner.advance(by);
        Ok(())
    }

    /// Sets the reading to `ns` nanoseconds (either direction: a test may wind it back).
    fn set_ns(&self, ns: u64) {
        self.inner.set_ns(ns);
    }

    fn __repr__(&self) -> String {
        format!("<ManualClock now_ns={}>", self.inner.now_ns())
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("ManualClock cannot be pickled"))
    }
}
