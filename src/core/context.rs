//! Canonical encoding of an encryption context.
//!
//! ```text
//! u16 BE  pair count
//! repeated, sorted by key bytes:
//!   u16 BE key length, key (UTF-8), u16 BE value length, value (UTF-8)
//! ```
//! Sorting makes the encoding independent of insertion order; length prefixes make it
//! injective, so `{"a": "b,c=d"}` and `{"a": "b", "c": "d"}` never share bytes. Strings are
//! compared byte for byte with no Unicode normalization, exactly as KMS compares them.

use aws_lc_rs::digest;

use crate::core::error::{Error, Result};

/// Maximum size of an encoded context (the ESDK and KMS use the same u16 bound).
pub const MAX_CONTEXT_LEN: usize = u16::MAX as usize;

/// Encodes context pairs canonically. An empty context encodes to two zero bytes.
///
/// # Errors
/// [`Error::InvalidContext`] for an empty or duplicate key, or an encoding over 65,535 bytes.
pub fn encode<'a, I>(pairs: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut items: Vec<(&str, &str)> = pairs.into_iter().collect();
    if items.len() > MAX_CONTEXT_LEN / 4 {
        return Err(Error::InvalidContext("too many entries"));
    }
    items.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for w in items.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(Error::InvalidContext("duplicate key"));
        }
    }
    let mut out = Vec::with_capacity(
        2 + items
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for (k, v) in items {
        if k.is_empty() {
            return Err(Error::InvalidContext("empty key"));
        }
        for s in [k, v] {
            let len =
                u16::try_from(s.len()).map_err(|_| Error::InvalidContext("entry too long"))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        if out.len() > MAX_CONTEXT_LEN {
            return Err(Error::InvalidContext("encoded context exceeds 65535 bytes"));
        }
    }
    Ok(out)
}

/// Checks that `bytes` is a canonical encoding (as produced by [`encode`]).
///
/// # Errors
/// [`Error::InvalidContext`] when it is not.
pub fn validate(bytes: &[u8]) -> Result<()> {
    let bad = Error::InvalidContext("not a canonical context encoding");
    if bytes.len() > MAX_CONTEXT_LEN || bytes.len() < 2 {
        return Err(bad);
    }
    let count = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
    let mut pos = 2usize;
    let mut prev: Option<&[u8]> = None;
    for _ in 0..count {
        let key = take_str(bytes, &mut pos).ok_or(bad)?;
        let _value = take_str(bytes, &mut pos).ok_or(bad)?;
        if key.is_empty() || prev.is_some_and(|p| p >= key) {
            return Err(bad);
        }
        prev = Some(key);
    }
    if pos != bytes.len() {
        return Err(bad);
    }
    Ok(())
}

fn take_str<'a>(bytes: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len_bytes = bytes.get(*pos..pos.checked_add(2)?)?;
    let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
    let start = *pos + 2;
    let s = bytes.get(start..start.checked_add(len)?)?;
    std::str::from_utf8(s).ok()?;
    *pos = start + len;
    Some(s)
}

/// SHA-256 of a canonical context: what audit records and key-store rows keep instead of the
/// raw values.
pub fn digest(canonical: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, canonical);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent() {
        let a = encode([("tenant_id", "t1"), ("data_class", "pii")]).unwrap();
        let b = encode([("data_class", "pii"), ("tenant_id", "t1")]).unwrap();
        assert_eq!(a, b);
        validate(&a).unwrap();
    }

    #[test]
    fn delimiter_injection_is_distinct() {
        let a = encode([("a", "b,c=d")]).unwrap();
        let b = encode([("a", "b"), ("c", "d")]).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn empty_context() {
        assert_eq!(encode([]).unwrap(), vec![0, 0]);
        validate(&[0, 0]).unwrap();
    }

    #[test]
    fn rejects_bad_input() {
        assert!(encode([("", "x")]).is_err());
        assert!(encode([("a", "x"), ("a", "y")]).is_err());
        let big = "x".repeat(70_000);
        assert!(encode([("a", big.as_str())]).is_err());
        let many: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
        assert!(encode(many.iter().map(|k| (k.as_str(), "v"))).is_err());
    }

    #[test]
    fn validate_rejects_non_canonical() {
        assert!(validate(b"").is_err());
        assert!(validate(&[0, 1]).is_err());
        let mut ok = encode([("a", "1")]).unwrap();
        ok.push(0);
        assert!(validate(&ok).is_err());
        // Unsorted keys.
        let mut unsorted = vec![0, 2];
        for k in ["b", "a"] {
            unsorted.extend_from_slice(&[0, 1]);
            unsorted.extend_from_slice(k.as_bytes());
            unsorted.extend_from_slice(&[0, 0]);
        }
        assert!(validate(&unsorted).is_err());
    }

    #[test]
    fn case_and_normalization_are_significant() {
        let nfc = encode([("name", "\u{e9}")]).unwrap();
        let nfd = encode([("name", "e\u{301}")]).unwrap();
        assert_ne!(nfc, nfd);
        assert_ne!(encode([("a", "X")]).unwrap(), encode([("a", "x")]).unwrap());
        assert_ne!(
            encode([("a", "x ")]).unwrap(),
            encode([("a", "x")]).unwrap()
        );
    }
}
