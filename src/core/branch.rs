//! Branch keys: data keys derived locally from a branch key (hierarchical keys).
//!
//! A branch key is a 256-bit key that the key store holds wrapped (by KMS or the local master
//! key). A process unwraps it once per cache TTL and derives every DEK from it here, without
//! any further KMS call:
//!
//! ```text
//! DEK = HKDF-SHA256(IKM  = branch key,
//!                   salt = 8 random bytes (carried in the envelope),
//!                   info = "greenlang-crypto/v1/branch-dek" || u32 branch id || canonical context)
//! ```
//!
//! (RFC 5869.) The context is part of `info`, so two contexts never share a DEK, even under
//! one branch key and one salt. A fresh salt is drawn for every derived DEK, so a DEK whose
//! message or byte budget is spent is replaced by an unrelated one; for one branch key and one
//! context, two derivations collide only when their 64-bit salts do (probability about
//! n^2 / 2^65 after n derivations).
//!
//! The branch key itself never seals anything: it only feeds HKDF. Derivations are counted in
//! an atomic, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::core::aead::{DataKey, UsageLimits, KEY_LEN};
use crate::core::context;
use crate::core::envelope::{HeaderSpec, KeyRef, Parsed, Sealer, BRANCH_SALT_LEN};
use crate::core::error::{Error, Result};

/// Domain-separation label of derived DEKs (HKDF `info` prefix).
const DEK_LABEL: &[u8] = b"greenlang-crypto/v1/branch-dek";

static DERIVATIONS: AtomicU64 = AtomicU64::new(0);

/// DEKs derived from branch keys in this process so far.
pub fn derivations() -> u64 {
    DERIVATIONS.load(Ordering::Relaxed)
}

/// Derives the DEK of `branch_id`, `salt` and `canonical_context` from `branch_key`.
///
/// # Errors
/// [`Error::InvalidContext`] when the context is not a canonical encoding, [`Error::Crypto`]
/// if HKDF fails.
pub fn derive_dek(
    branch_key: &DataKey,
    branch_id: u32,
    salt: &[u8; BRANCH_SALT_LEN],
    canonical_context: &[u8],
    limits: UsageLimits,
) -> Result<DataKey> {
    context::validate(canonical_context)?;
    let id = branch_id.to_be_bytes();
    let info: [&[u8]; 3] = [DEK_LABEL, &id, canonical_context];
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    branch_key.with_secret(|secret| -> Result<()> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
        prk.expand(&info, hkdf::HKDF_SHA256)?.fill(&mut okm[..])?;
        Ok(())
    })?;
    let dek = DataKey::from_bytes(&okm[..], limits)?;
    DERIVATIONS.fetch_add(1, Ordering::Relaxed);
    Ok(dek)
}

/// Derives a fresh DEK (new random salt) for `canonical_context` and binds it to a sealer
/// whose envelopes carry a branch key reference.
///
/// # Errors
/// As [`derive_dek`], and [`Error::Crypto`] if the random generator fails.
pub fn new_sealer(
    branch_key: &DataKey,
    branch_id: u32,
    key_version: u32,
    canonical_context: &[u8],
    limits: UsageLimits,
    format_version: u8,
) -> Result<Sealer> {
    let mut salt = [0u8; BRANCH_SALT_LEN];
    crate::core::osrand::fill(&mut salt)?;
    let dek = derive_dek(branch_key, branch_id, &salt, canonical_context, limits)?;
    let spec = HeaderSpec {
        version: format_version,
        key_version,
        key_ref: KeyRef::Branch { branch_id, salt },
        context_digest: false,
        commitment: false,
    };
    Sealer::new(Arc::new(dek), &spec, canonical_context)
}

/// The DEK a parsed branch envelope was sealed with, derived again from its branch key.
///
/// # Errors
/// [`Error::InvalidArgument`] when the envelope has no branch key reference; as
/// [`derive_dek`] otherwise.
pub fn dek_for(
    parsed: &Parsed<'_>,
    branch_key: &DataKey,
    canonical_context: &[u8],
    limits: UsageLimits,
) -> Result<DataKey> {
    match parsed.key_ref {
        KeyRef::Branch { branch_id, salt } => {
            derive_dek(branch_key, branch_id, &salt, canonical_context, limits)
        }
        _ => Err(Error::InvalidArgument(
            "envelope has no branch key reference",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::envelope::{
        self, branch_dek_id, key_ref_id, parse, with_key_ref_id, VERSION_2,
    };

    fn ctx(tenant: &str) -> Vec<u8> {
        context::encode([("tenant_id", tenant), ("data_class", "pii")]).unwrap()
    }

    fn branch() -> DataKey {
        DataKey::generate(UsageLimits::default()).unwrap()
    }

    fn limits() -> UsageLimits {
        UsageLimits::default()
    }

    #[test]
    fn rfc5869_hkdf_sha256_case_1() {
        // RFC 5869, appendix A.1, checks the primitive the derivation is built on.
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm);
        struct Len42;
        impl hkdf::KeyType for Len42 {
            fn len(&self) -> usize {
                42
            }
        }
        let mut okm = [0u8; 42];
        prk.expand(&[&info], Len42).unwrap().fill(&mut okm).unwrap();
        let hex: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let b = branch();
        let salt = [1u8; 8];
        let k1 = derive_dek(&b, 7, &salt, &ctx("a"), limits()).unwrap();
        let k2 = derive_dek(&b, 7, &salt, &ctx("a"), limits()).unwrap();
        assert_eq!(k1.commitment(), k2.commitment());
        // Another context, salt, branch id or branch key: another DEK.
        for other in [
            derive_dek(&b, 7, &salt, &ctx("b"), limits()).unwrap(),
            derive_dek(&b, 7, &[2u8; 8], &ctx("a"), limits()).unwrap(),
            derive_dek(&b, 8, &salt, &ctx("a"), limits()).unwrap(),
            derive_dek(&branch(), 7, &salt, &ctx("a"), limits()).unwrap(),
        ] {
            assert_ne!(other.commitment(), k1.commitment());
        }
        // The derived key is not the branch key itself.
        assert_ne!(k1.commitment(), b.commitment());
    }

    #[test]
    fn derivations_are_counted() {
        let before = derivations();
        derive_dek(&branch(), 1, &[0u8; 8], &ctx("a"), limits()).unwrap();
        assert!(derivations() > before);
    }

    #[test]
    fn non_canonical_context_is_rejected() {
        assert!(matches!(
            derive_dek(&branch(), 1, &[0u8; 8], b"\x00", limits()),
            Err(Error::InvalidContext(_))
        ));
    }

    #[test]
    fn compact_round_trip_and_envelope_size() {
        let b = branch();
        let sealer = new_sealer(&b, 0xDEAD_BEEF, 4, &ctx("a"), limits(), VERSION_2).unwrap();
        let env = sealer.seal(b"", &[9u8; 16]).unwrap();
        // 8 fixed + 12 reference + 32 commitment + 12 nonce + 16 ciphertext + 16 tag.
        assert_eq!(env.len(), 96);
        let p = parse(&env).unwrap();
        assert_eq!(p.key_version, 4);
        let KeyRef::Branch { branch_id, salt } = p.key_ref else {
            panic!("not a branch reference")
        };
        assert_eq!(branch_id, 0xDEAD_BEEF);
        let dek = dek_for(&p, &b, &ctx("a"), limits()).unwrap();
        assert_eq!(
            envelope::open(&dek, &env, &ctx("a"), b"").unwrap(),
            [9u8; 16]
        );
        // Under another context the derived key differs and the tag fails: opaque.
        let other = dek_for(&p, &b, &ctx("b"), limits()).unwrap();
        assert_eq!(
            envelope::open(&other, &env, &ctx("b"), b""),
            Err(Error::Authentication)
        );
        // Another branch key fails the same way.
        let foreign = dek_for(&p, &branch(), &ctx("a"), limits()).unwrap();
        assert_eq!(
            envelope::open(&foreign, &env, &ctx("a"), b""),
            Err(Error::Authentication)
        );
        // The cache id covers branch id, salt and context.
        let id = with_key_ref_id(&p, &ctx("a"), |id| id.to_vec());
        assert_eq!(id, branch_dek_id(branch_id, &salt, &ctx("a")));
        assert_ne!(id, with_key_ref_id(&p, &ctx("b"), |id| id.to_vec()));
        assert!(id.starts_with(&envelope::branch_id_prefix(branch_id)));
        assert!(id.starts_with(&key_ref_id(&p)));
    }

    #[test]
    fn long_contexts_are_digested_in_the_cache_id() {
        let long = "x".repeat(400);
        let c = context::encode([("tenant_id", long.as_str()), ("data_class", "pii")]).unwrap();
        let id = branch_dek_id(1, &[3u8; 8], &c);
        assert_eq!(id.len(), 1 + 4 + 8 + 1 + 32);
        let b = branch();
        let env = new_sealer(&b, 1, 1, &c, limits(), VERSION_2)
            .unwrap()
            .seal(b"", b"v")
            .unwrap();
        let p = parse(&env).unwrap();
        let KeyRef::Branch { salt, .. } = p.key_ref else {
            panic!("not a branch reference")
        };
        assert_eq!(
            with_key_ref_id(&p, &c, |id| id.to_vec()),
            branch_dek_id(1, &salt, &c)
        );
    }

    #[test]
    fn fresh_sealers_use_fresh_salts() {
        let b = branch();
        let s1 = new_sealer(&b, 1, 1, &ctx("a"), limits(), VERSION_2).unwrap();
        let s2 = new_sealer(&b, 1, 1, &ctx("a"), limits(), VERSION_2).unwrap();
        assert_ne!(s1.header(), s2.header());
        assert_ne!(s1.key().commitment(), s2.key().commitment());
    }

    #[test]
    fn derived_keys_keep_their_budget() {
        let b = branch();
        let s = new_sealer(
            &b,
            1,
            1,
            &ctx("a"),
            UsageLimits::new(2, u64::MAX).unwrap(),
            VERSION_2,
        )
        .unwrap();
        s.seal(b"", b"1").unwrap();
        s.seal(b"", b"2").unwrap();
        assert_eq!(s.seal(b"", b"3"), Err(Error::KeyUsageExceeded));
    }

    #[test]
    fn every_truncation_and_bit_flip_rejected() {
        let b = branch();
        let env = new_sealer(&b, 9, 2, &ctx("a"), limits(), VERSION_2)
            .unwrap()
            .seal(b"row", b"plaintext!")
            .unwrap();
        let open = |bytes: &[u8]| -> Result<Vec<u8>> {
            let p = parse(bytes)?;
            let dek = dek_for(&p, &b, &ctx("a"), limits())?;
            envelope::open(&dek, bytes, &ctx("a"), b"row")
        };
        assert_eq!(open(&env).unwrap(), b"plaintext!");
        for n in 0..env.len() {
            assert!(open(&env[..n]).is_err(), "truncated at {n}");
        }
        for bit in 0..env.len() * 8 {
            let mut bad = env.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&bad).is_err(), "bit {bit}");
        }
        for extra in [1usize, 12, 20] {
            let mut long = env.clone();
            long.extend(std::iter::repeat_n(0u8, extra));
            assert!(open(&long).is_err(), "trailing {extra}");
        }
    }

    #[test]
    fn parser_is_bounded_on_any_prefix_and_kind() {
        // Every short input and every flag byte parses or fails without panicking.
        let b = branch();
        let env = new_sealer(&b, 9, 2, &ctx("a"), limits(), VERSION_2)
            .unwrap()
            .seal(b"", b"x")
            .unwrap();
        for flags in 0u8..=255 {
            let mut e = env.clone();
            e[3] = flags;
            let _ = parse(&e);
            for n in 0..e.len() {
                let _ = parse(&e[..n]);
            }
        }
    }

    #[test]
    fn non_branch_envelope_is_refused() {
        let b = branch();
        let k = branch();
        let spec = HeaderSpec {
            version: crate::core::envelope::VERSION_1,
            key_version: 1,
            key_ref: KeyRef::Stored { dek_id: 1 },
            context_digest: false,
            commitment: false,
        };
        let env = envelope::seal(&k, &spec, &ctx("a"), b"", b"x").unwrap();
        let p = parse(&env).unwrap();
        assert!(matches!(
            dek_for(&p, &b, &ctx("a"), limits()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
