//! Pure-Rust core of greenlang-crypto.
//!
//! Nothing in this module tree knows about Python: it is tested with plain `cargo test` and the
//! PyO3 layer in `crate::py` is a thin adapter over it.

pub mod aead;
pub mod branch;
pub mod cache;
pub mod clock;
pub mod context;
pub mod envelope;
pub mod error;
pub mod fork;
pub mod index;
pub mod osrand;
pub mod pool;
pub mod stats;
pub mod stream;

pub use error::{Error, Result};
