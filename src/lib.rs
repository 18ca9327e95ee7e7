//! greenlang-crypto: AES-256-GCM envelope encryption core.
//!
//! `core` is pure Rust; `py` (behind the `python` feature) adapts it to Python with PyO3.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod core;
#[cfg(feature = "python")]
mod py;
