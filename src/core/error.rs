//! The single error type of the core. The PyO3 layer maps it to Python exceptions in one place.

use std::fmt;

/// Every failure the core can report.
///
/// Messages are static strings on purpose: an error must never carry key bytes, plaintext or
/// anything derived from them, and an authentication failure carries no detail at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The tag did not verify, or the key commitment did not match. Deliberately opaque.
    Authentication,
    /// The envelope is structurally invalid (truncated, bad length, trailing bytes...).
    Malformed(&'static str),
    /// The envelope uses a format version this build does not read.
    UnsupportedVersion(u8),
    /// The envelope names an algorithm outside the allow-list.
    UnsupportedAlgorithm(u8),
    /// The key reached its message or byte budget (NIST SP 800-38D, section 8.3).
    KeyUsageExceeded,
    /// The input is larger than the configured or the algorithm's maximum.
    PayloadTooLarge,
    /// A key had the wrong length or could not be loaded.
    InvalidKey(&'static str),
    /// A nonce had the wrong length (hazmat only).
    InvalidNonce,
    /// The encryption context is not acceptable.
    InvalidContext(&'static str),
    /// A caller-supplied argument is out of range.
    InvalidArgument(&'static str),
    /// The system random generator or another primitive failed unexpectedly.
    Crypto,
}

/// Result alias used throughout the core.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Authentication => f.write_str("decryption failed"),
            Error::Malformed(why) => write!(f, "malformed envelope: {why}"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported envelope format version {v}"),
            Error::UnsupportedAlgorithm(a) => write!(f, "unsupported algorithm id {a}"),
            Error::KeyUsageExceeded => f.write_str("data key usage limit reached"),
            Error::PayloadTooLarge => f.write_str("payload exceeds the maximum size"),
            Error::InvalidKey(why) => write!(f, "invalid key: {why}"),
            Error::InvalidNonce => f.write_str("nonce must be 12 bytes"),
            Error::InvalidContext(why) => write!(f, "invalid encryption context: {why}"),
            Error::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            Error::Crypto => f.write_str("cryptographic primitive failure"),
        }
    }
}

impl std::error::Error for Error {}

impl From<aws_lc_rs::error::Unspecified> for Error {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Error::Crypto
    }
}
