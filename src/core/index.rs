//! Blind indexes: HMAC-SHA256 under per-purpose keys derived with HKDF (RFC 5869).
//!
//! An index key is never a DEK or a KEK: it is derived from a root key with an `info` string
//! naming its purpose (table, column, tenant, index version), so equal plaintexts in two
//! columns get unrelated indexes.

use aws_lc_rs::hmac;
use subtle::ConstantTimeEq;

use crate::core::aead::DataKey;
use crate::core::error::{Error, Result};

/// Shortest index a caller may ask for; shorter ones make the false-positive rate useless.
pub const MIN_INDEX_LEN: usize = 4;
/// Full HMAC-SHA256 output length.
pub const MAX_INDEX_LEN: usize = 32;

/// An HMAC key for one blind-index purpose. Not `Clone`; `Debug` is redacted.
pub struct BlindIndexKey {
    key: hmac::Key,
}

impl std::fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndexKey(<redacted>)")
    }
}

impl BlindIndexKey {
    /// Derives the index key for `purpose` from `root`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty purpose.
    pub fn derive(root: &DataKey, purpose: &[u8]) -> Result<Self> {
        if purpose.is_empty() {
            return Err(Error::InvalidArgument(
                "blind index purpose must not be empty",
            ));
        }
        let mut info = Vec::with_capacity(purpose.len() + 32);
        info.extend_from_slice(b"greenlang-crypto/v1/blind-index/");
        info.extend_from_slice(purpose);
        let secret = root.derive(&info)?;
        Ok(BlindIndexKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret[..]),
        })
    }

    /// Computes the index of `value`, truncated to `len` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `len` is in `4..=32`.
    pub fn compute(&self, value: &[u8], len: usize) -> Result<Vec<u8>> {
        if !(MIN_INDEX_LEN..=MAX_INDEX_LEN).contains(&len) {
            return Err(Error::InvalidArgument("index length must be 4..=32 bytes"));
        }
        let tag = hmac::sign(&self.key, value);
        Ok(tag.as_ref()[..len].to_vec())
    }

    /// Constant-time check that `index` is the (possibly truncated) index of `value`.
    pub fn verify(&self, value: &[u8], index: &[u8]) -> bool {
        if !(MIN_INDEX_LEN..=MAX_INDEX_LEN).contains(&index.len()) {
            return false;
        }
        let tag = hmac::sign(&self.key, value);
        bool::from(tag.as_ref()[..index.len()].ct_eq(index))
    }
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::aead::UsageLimits;

    #[test]
    fn deterministic_and_separated() {
        let root = DataKey::generate(UsageLimits::default()).unwrap();
        let a = BlindIndexKey::derive(&root, b"users.email").unwrap();
        let a2 = BlindIndexKey::derive(&root, b"users.email").unwrap();
        let b = BlindIndexKey::derive(&root, b"users.phone").unwrap();
        let x = a.compute(b"a@b.com", 32).unwrap();
        assert_eq!(x, a2.compute(b"a@b.com", 32).unwrap());
        assert_ne!(x, b.compute(b"a@b.com", 32).unwrap());
        assert!(a.verify(b"a@b.com", &x));
        assert!(a.verify(b"a@b.com", &x[..8]));
        assert!(!a.verify(b"a@b.co", &x));
        assert_eq!(a.compute(b"a@b.com", 8).unwrap(), x[..8].to_vec());
    }

    #[test]
    fn rfc4231_hmac_sha256_case_2() {
        // RFC 4231 test case 2 checks the HMAC primitive under the derivation.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bounds() {
        let root = DataKey::generate(UsageLimits::default()).unwrap();
        let k = BlindIndexKey::derive(&root, b"p").unwrap();
        assert!(k.compute(b"v", 3).is_err());
        assert!(k.compute(b"v", 33).is_err());
        assert!(BlindIndexKey::derive(&root, b"").is_err());
        assert!(constant_time_eq(b"ab", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ac"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
