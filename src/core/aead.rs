//! AES-256-GCM with random 96-bit nonces (NIST SP 800-38D) over aws-lc-rs.
//!
//! The sealed layout produced here is `nonce (12) || ciphertext || tag (16)`. No function in this
//! module takes a nonce from its caller: nonces come from the kernel's random generator. The
//! caller-nonce primitive used for interop lives in [`crate::core::aead::hazmat`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::core::error::{Error, Result};
use crate::core::{osrand, stats};

/// Key length of AES-256 in bytes.
pub const KEY_LEN: usize = 32;
/// GCM nonce length in bytes (96 bits, the length SP 800-38D recommends).
pub const NONCE_LEN: usize = 12;
/// GCM tag length in bytes (128 bits).
pub const TAG_LEN: usize = 16;
/// Bytes a seal adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// The largest plaintext one GCM invocation may process: 2^39 - 256 bits (SP 800-38D, 5.2.1.1).
pub const GCM_MAX_PLAINTEXT: u64 = (1u64 << 36) - 32;
/// Hard cap on messages under one key with random 96-bit nonces (SP 800-38D, 8.3): 2^32.
pub const MAX_MESSAGES_CAP: u64 = 1u64 << 32;

/// Usage budget of one data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimits {
    /// Maximum number of seals; at most [`MAX_MESSAGES_CAP`].
    pub max_messages: u64,
    /// Maximum number of plaintext bytes sealed in total.
    pub max_bytes: u64,
}

impl Default for UsageLimits {
    fn default() -> Self {
        UsageLimits {
            max_messages: MAX_MESSAGES_CAP,
            max_bytes: u64::MAX,
        }
    }
}

impl UsageLimits {
    /// Builds limits, rejecting a message budget above the SP 800-38D cap or a zero budget.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a budget is zero or above the cap.
    pub fn new(max_messages: u64, max_bytes: u64) -> Result<Self> {
        if max_messages == 0 || max_messages > MAX_MESSAGES_CAP {
            return Err(Error::InvalidArgument("max_messages must be in 1..=2**32"));
        }
        if max_bytes == 0 {
            return Err(Error::InvalidArgument("max_bytes must be positive"));
        }
        Ok(UsageLimits {
            max_messages,
            max_bytes,
        })
    }
}

/// Domain-separation label of the key commitment (a MAC of a constant under the DEK).
const COMMITMENT_LABEL: &[u8] = b"greenlang-crypto/v1/key-commitment";
/// Domain-separation label of the public key fingerprint.
const FINGERPRINT_LABEL: &[u8] = b"greenlang-crypto/v1/key-fingerprint";
/// HKDF salt for derived subkeys (RFC 5869, section 3.1: a fixed, non-secret salt is fine).
const HKDF_SALT: &[u8] = b"greenlang-crypto/v1/hkdf-salt";
/// HKDF salt of the envelope v2 key schedule (docs/FORMAT.md, "Key schedule (v2)").
const V2_SALT: &[u8] = b"greenlang-crypto/v2/envelope";
/// HKDF info of the AES-256-GCM key of envelope v2.
const V2_AEAD_INFO: &[u8] = b"greenlang-crypto/v2/aes-256-gcm-key";
/// HKDF info of the key commitment of envelope v2.
const V2_COMMITMENT_INFO: &[u8] = b"greenlang-crypto/v2/key-commitment";

/// The keys envelope v2 derives from a DEK: the DEK itself never keys AES-GCM, so the same
/// DEK can feed the stream key schedule and the commitment without one use weakening another.
pub struct EnvelopeKeys {
    aead: LessSafeKey,
    commitment: [u8; 32],
}

impl EnvelopeKeys {
    /// The 32-byte key commitment a v2 header carries.
    pub fn commitment(&self) -> &[u8; 32] {
        &self.commitment
    }
}

/// A 256-bit data encryption key with usage counters.
///
/// The key bytes are zeroized on drop (the `Zeroizing` copy here; AWS-LC cleanses its own key
/// schedule when the context is freed). `Debug` never prints key material. The type is
/// intentionally not `Clone`: it is shared through `Arc` so that every holder sees one set of
/// usage counters, and key bytes are never duplicated.
pub struct DataKey {
    key: LessSafeKey,
    /// Derived on first use and kept for the key's life, so a v2 seal costs what a v1 seal
    /// does: the HKDF runs once per DEK, not once per message.
    envelope_v2: OnceLock<EnvelopeKeys>,
    secret: Zeroizing<[u8; KEY_LEN]>,
    limits: UsageLimits,
    messages: AtomicU64,
    bytes: AtomicU64,
    created: Instant,
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // Counted so that tests can prove no key outlives the caches that held it.
        stats::data_key_dropped();
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key", &"<redacted>")
            .field("messages_used", &self.messages_used())
            .field("max_messages", &self.limits.max_messages)
            .finish()
    }
}

impl DataKey {
    /// Generates a fresh random key from the kernel's generator.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the random generator fails.
    pub fn generate(limits: UsageLimits) -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        osrand::fill(&mut secret[..])?;
        Self::from_secret(secret, limits)
    }

    /// Loads a key from its 32 raw bytes (for example a KMS GenerateDataKey answer).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] unless `bytes` is exactly 32 bytes long.
    pub fn from_bytes(bytes: &[u8], limits: UsageLimits) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::InvalidKey("AES-256 keys must be 32 bytes"));
        }
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        secret.copy_from_slice(bytes);
        Self::from_secret(secret, limits)
    }

    fn from_secret(secret: Zeroizing<[u8; KEY_LEN]>, limits: UsageLimits) -> Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, &secret[..])
            .map_err(|_| Error::InvalidKey("key rejected"))?;
        stats::data_key_created();
        Ok(DataKey {
            key: LessSafeKey::new(unbound),
            envelope_v2: OnceLock::new(),
            secret,
            limits,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            created: Instant::now(),
        })
    }

    /// The usage budget of this key.
    pub fn limits(&self) -> UsageLimits {
        self.limits
    }

    /// Messages sealed so far (including reservations of seals that later failed).
    pub fn messages_used(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Plaintext bytes sealed so far.
    pub fn bytes_used(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Seconds since the key was created or loaded in this process.
    pub fn age_seconds(&self) -> f64 {
        self.created.elapsed().as_secs_f64()
    }

    /// True when not even one more empty message may be sealed.
    pub fn exhausted(&self) -> bool {
        self.messages_used() >= self.limits.max_messages
            || self.bytes_used() >= self.limits.max_bytes
    }

    /// Reserves `messages` seals of `bytes` plaintext bytes in total, or refuses.
    ///
    /// A compare-and-swap loop makes the budget exact under contention: with a limit of N,
    /// exactly N reservations succeed. When the byte budget refuses after the message budget
    /// accepted, the message slots stay consumed; that errs on the side of fewer messages.
    fn reserve(&self, messages: u64, bytes: u64) -> Result<()> {
        let max_m = self.limits.max_messages;
        let ok_m = self
            .messages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(messages).filter(|n| *n <= max_m)
            })
            .is_ok();
        if !ok_m {
            stats::record_usage_refusal();
            return Err(Error::KeyUsageExceeded);
        }
        let max_b = self.limits.max_bytes;
        let ok_b = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= max_b)
            })
            .is_ok();
        if !ok_b {
            stats::record_usage_refusal();
            return Err(Error::KeyUsageExceeded);
        }
        Ok(())
    }

    /// Length of the sealed output for a plaintext of `plaintext_len` bytes.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`] above the GCM maximum.
    pub fn sealed_len(plaintext_len: usize) -> Result<usize> {
        if plaintext_len as u64 > GCM_MAX_PLAINTEXT {
            return Err(Error::PayloadTooLarge);
        }
        plaintext_len
            .checked_add(OVERHEAD)
            .ok_or(Error::PayloadTooLarge)
    }

    /// Reserves budget for a batch before any of it is sealed, so a batch either fits or is
    /// refused as a whole.
    ///
    /// # Errors
    /// [`Error::KeyUsageExceeded`] when the batch does not fit the remaining budget.
    pub fn reserve_batch(&self, messages: u64, bytes: u64) -> Result<()> {
        self.reserve(messages, bytes)
    }

    /// Seals `plaintext` into `out` (`nonce || ciphertext || tag`), counting one message.
    ///
    /// `out` must be exactly [`DataKey::sealed_len`] bytes.
    ///
    /// # Errors
    /// [`Error::KeyUsageExceeded`] when the budget is spent, [`Error::PayloadTooLarge`] above the
    /// GCM maximum, [`Error::Crypto`] if the random generator fails.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) -> Result<()> {
        if out.len() != Self::sealed_len(plaintext.len())? {
            return Err(Error::InvalidArgument("output buffer has the wrong length"));
        }
        self.reserve(1, plaintext.len() as u64)?;
        self.seal_reserved(aad, plaintext, out)
    }

    /// Seals with budget already reserved through [`DataKey::reserve_batch`].
    ///
    /// # Errors
    /// As [`DataKey::seal_into`], except for the budget check.
    pub fn seal_reserved(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) -> Result<()> {
        self.seal_reserved_with(&self.key, aad, plaintext, out)
    }

    /// [`DataKey::seal_reserved`] under the AES-GCM key of envelope format `version` (the DEK
    /// itself for v1, its derived key for v2); the budget is this key's either way.
    ///
    /// # Errors
    /// As [`DataKey::seal_reserved`]; [`Error::UnsupportedVersion`] for another version.
    pub fn seal_reserved_for(
        &self,
        version: u8,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        self.seal_reserved_with(self.aead_for(version)?, aad, plaintext, out)
    }

    /// [`DataKey::seal_into`] under the AES-GCM key of envelope format `version`.
    ///
    /// # Errors
    /// As [`DataKey::seal_into`]; [`Error::UnsupportedVersion`] for another version.
    pub fn seal_into_for(
        &self,
        version: u8,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let aead = self.aead_for(version)?;
        if out.len() != Self::sealed_len(plaintext.len())? {
            return Err(Error::InvalidArgument("output buffer has the wrong length"));
        }
        self.reserve(1, plaintext.len() as u64)?;
        self.seal_reserved_with(aead, aad, plaintext, out)
    }

    fn seal_reserved_with(
        &self,
        aead: &LessSafeKey,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        if out.len() != Self::sealed_len(plaintext.len())? {
            return Err(Error::InvalidArgument("output buffer has the wrong length"));
        }
        let (nonce_out, rest) = out.split_at_mut(NONCE_LEN);
        let (ct_out, tag_out) = rest.split_at_mut(plaintext.len());
        // The nonce is random (drawn from AWS-LC's DRBG through the per-thread pool below);
        // with random 96-bit nonces the message cap keeps the collision probability below
        // 2^-32 (SP 800-38D, 8.3).
        let nonce_bytes = nonce_pool::next()?;
        nonce_out.copy_from_slice(&nonce_bytes);
        // Out-of-place sealing writes the ciphertext straight into the caller's buffer, which
        // saves a copy of the whole payload compared with sealing in place.
        aead.seal_out_of_place_scatter(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            plaintext,
            ct_out,
            &[],
            tag_out,
        )?;
        stats::record_seal(1, plaintext.len() as u64);
        Ok(())
    }

    /// Length of the plaintext inside a sealed value.
    ///
    /// # Errors
    /// [`Error::Malformed`] when `sealed_len` is shorter than nonce plus tag.
    pub fn opened_len(sealed_len: usize) -> Result<usize> {
        sealed_len
            .checked_sub(OVERHEAD)
            .ok_or(Error::Malformed("ciphertext too short"))
    }

    /// Opens `nonce || ciphertext || tag` into `out`. On failure `out` is zeroized, so no
    /// unauthenticated plaintext survives in the caller's buffer.
    ///
    /// # Errors
    /// [`Error::Authentication`] on any tag failure, [`Error::Malformed`] when too short.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<()> {
        self.open_into_with(&self.key, aad, sealed, out)
    }

    /// [`DataKey::open_into`] under the AES-GCM key of envelope format `version`.
    ///
    /// # Errors
    /// As [`DataKey::open_into`]; [`Error::UnsupportedVersion`] for another version.
    pub fn open_into_for(
        &self,
        version: u8,
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        self.open_into_with(self.aead_for(version)?, aad, sealed, out)
    }

    fn open_into_with(
        &self,
        aead: &LessSafeKey,
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let result = Self::open_unrecorded(aead, aad, sealed, out);
        match &result {
            Ok(()) => stats::record_open(1, out.len() as u64),
            Err(e) => stats::record_open_failure(e),
        }
        result
    }

    fn open_unrecorded(
        aead: &LessSafeKey,
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let pt_len = Self::opened_len(sealed.len())?;
        if out.len() != pt_len {
            return Err(Error::InvalidArgument("output buffer has the wrong length"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(pt_len);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::InvalidNonce)?;
        let opened = aead.open_separate_gather(nonce, Aad::from(aad), ct, tag, out);
        if opened.is_err() {
            zeroize::Zeroize::zeroize(out);
            return Err(Error::Authentication);
        }
        Ok(())
    }

    /// Seals into a new vector (convenience for the core and its tests).
    ///
    /// # Errors
    /// As [`DataKey::seal_into`].
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; Self::sealed_len(plaintext.len())?];
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens into a new vector.
    ///
    /// # Errors
    /// As [`DataKey::open_into`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; Self::opened_len(sealed.len())?];
        self.open_into(aad, sealed, &mut out)?;
        Ok(out)
    }

    /// Key commitment: HMAC-SHA256 of a fixed label under the key.
    ///
    /// Stored in inline envelopes and checked before decryption, so that one ciphertext cannot
    /// be opened under two different keys (GCM alone is not key-committing).
    pub fn commitment(&self) -> [u8; 32] {
        self.mac_label(COMMITMENT_LABEL)
    }

    /// The envelope v2 keys of this DEK, derived on first use and then kept:
    /// `PRK = HKDF-Extract("greenlang-crypto/v2/envelope", DEK)`, the AES-256-GCM key is
    /// `HKDF-Expand(PRK, "greenlang-crypto/v2/aes-256-gcm-key", 32)` and the commitment
    /// `HKDF-Expand(PRK, "greenlang-crypto/v2/key-commitment", 32)` (RFC 5869).
    ///
    /// # Errors
    /// [`Error::Crypto`] if the derivation fails.
    pub fn envelope_keys(&self) -> Result<&EnvelopeKeys> {
        if let Some(keys) = self.envelope_v2.get() {
            return Ok(keys);
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, V2_SALT).extract(&self.secret[..]);
        let mut aead_key = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(&[V2_AEAD_INFO], hkdf::HKDF_SHA256)?
            .fill(&mut aead_key[..])?;
        let mut commitment = [0u8; 32];
        prk.expand(&[V2_COMMITMENT_INFO], hkdf::HKDF_SHA256)?
            .fill(&mut commitment[..])?;
        let unbound = UnboundKey::new(&AES_256_GCM, &aead_key[..])
            .map_err(|_| Error::InvalidKey("key rejected"))?;
        // Two threads may derive at once; both results are equal and the loser's is dropped.
        let _ = self.envelope_v2.set(EnvelopeKeys {
            aead: LessSafeKey::new(unbound),
            commitment,
        });
        self.envelope_v2.get().ok_or(Error::Crypto)
    }

    /// The key commitment of envelope format `version` (v1: HMAC of a label under the DEK;
    /// v2: the derived commitment).
    ///
    /// # Errors
    /// [`Error::UnsupportedVersion`] for another version, [`Error::Crypto`] if derivation fails.
    pub fn commitment_for(&self, version: u8) -> Result<[u8; 32]> {
        match version {
            1 => Ok(self.commitment()),
            2 => Ok(*self.envelope_keys()?.commitment()),
            v => Err(Error::UnsupportedVersion(v)),
        }
    }

    fn aead_for(&self, version: u8) -> Result<&LessSafeKey> {
        match version {
            1 => Ok(&self.key),
            2 => Ok(&self.envelope_keys()?.aead),
            v => Err(Error::UnsupportedVersion(v)),
        }
    }

    /// A public, non-secret 8-byte identifier of the key for logs and audit records.
    pub fn fingerprint(&self) -> [u8; 8] {
        let full = self.mac_label(FINGERPRINT_LABEL);
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    fn mac_label(&self, label: &[u8]) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret[..]);
        let tag = hmac::sign(&key, label);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Derives a 32-byte subkey with HKDF-SHA256 (RFC 5869) bound to `info`.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the expansion fails.
    pub fn derive(&self, info: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT);
        let prk = salt.extract(&self.secret[..]);
        let info_parts = [info];
        let okm = prk.expand(&info_parts, hkdf::HKDF_SHA256)?;
        let mut out = Zeroizing::new([0u8; 32]);
        okm.fill(&mut out[..])?;
        Ok(out)
    }

    /// Wraps another key under this one (local key provider): seals its 32 bytes.
    ///
    /// # Errors
    /// As [`DataKey::seal_into`].
    pub fn wrap_key(&self, other: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        self.seal(aad, &other.secret[..])
    }

    /// Unwraps a key sealed by [`DataKey::wrap_key`]; the plaintext key never leaves Rust.
    ///
    /// # Errors
    /// [`Error::Authentication`] when the wrapped key does not verify.
    pub fn unwrap_key(&self, wrapped: &[u8], aad: &[u8], limits: UsageLimits) -> Result<DataKey> {
        if wrapped.len() != KEY_LEN + OVERHEAD {
            return Err(Error::Authentication);
        }
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        self.open_into(aad, wrapped, &mut secret[..])?;
        Self::from_secret(secret, limits)
    }

    /// Exposes the key bytes to a closure without copying them out of Rust-owned memory.
    ///
    /// This is the one audited path through which key bytes leave this type: the hazmat export
    /// used by known-answer tests and key-file writing.
    pub fn with_secret<R>(&self, f: impl FnOnce(&[u8; KEY_LEN]) -> R) -> R {
        f(&self.secret)
    }
}

/// Random nonces drawn from the kernel's generator in blocks.
///
/// One `getrandom` system call costs about 0.5 µs here whatever its length, which would
/// dominate a 64-byte seal. The pool draws 64 nonces per call and hands each out once. Every
/// value still comes from the kernel's generator; what the pool adds
/// is state that a `fork()` would copy, so a `pthread_atfork` child handler bumps a generation
/// counter and a pool filled before the fork is discarded unused. Without that, parent and
/// child would hand out the same nonces.
pub mod nonce_pool {
    use std::cell::RefCell;

    use super::NONCE_LEN;
    use crate::core::error::Result;
    use crate::core::{fork, osrand};

    const POOL_NONCES: usize = 64;

    struct Pool {
        buf: [u8; NONCE_LEN * POOL_NONCES],
        next: usize,
        generation: u64,
    }

    thread_local! {
        static POOL: RefCell<Pool> = const {
            RefCell::new(Pool { buf: [0u8; NONCE_LEN * POOL_NONCES], next: POOL_NONCES, generation: 0 })
        };
    }

    /// Returns a fresh random nonce.
    ///
    /// # Errors
    /// [`crate::core::Error::Crypto`] if the kernel's generator fails.
    pub fn next() -> Result<[u8; NONCE_LEN]> {
        let generation = fork::generation();
        POOL.with(|cell| {
            let mut pool = cell.borrow_mut();
            if pool.next >= POOL_NONCES || pool.generation != generation {
                osrand::fill(&mut pool.buf)?;
                pool.next = 0;
                pool.generation = generation;
            }
            let start = pool.next * NONCE_LEN;
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&pool.buf[start..start + NONCE_LEN]);
            // Wipe the slot so a value can never be handed out twice, even by a bug in `next`.
            pool.buf[start..start + NONCE_LEN].fill(0);
            pool.next += 1;
            Ok(nonce)
        })
    }
}

/// Caller-nonce AES-256-GCM with the calling convention of `cryptography`'s `AESGCM`.
///
/// For interop and known-answer tests only: reusing a nonce under one key breaks GCM
/// completely, which is why nothing outside the hazmat module exposes this.
pub mod hazmat {
    use super::*;

    /// AES-256-GCM under a caller-supplied key and nonce.
    pub struct CallerNonceAead {
        key: LessSafeKey,
    }

    impl std::fmt::Debug for CallerNonceAead {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("CallerNonceAead(<redacted>)")
        }
    }

    impl CallerNonceAead {
        /// Builds the primitive from a 32-byte key.
        ///
        /// # Errors
        /// [`Error::InvalidKey`] unless the key is 32 bytes.
        pub fn new(key: &[u8]) -> Result<Self> {
            if key.len() != KEY_LEN {
                return Err(Error::InvalidKey(
                    "AESGCM key must be 32 bytes (AES-256 only)",
                ));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, key)
                .map_err(|_| Error::InvalidKey("key rejected"))?;
            Ok(CallerNonceAead {
                key: LessSafeKey::new(unbound),
            })
        }

        /// Encrypts into `out` (`ciphertext || tag`, `data.len() + 16` bytes).
        ///
        /// # Errors
        /// [`Error::InvalidNonce`] unless the nonce is 12 bytes.
        pub fn encrypt_into(
            &self,
            nonce: &[u8],
            data: &[u8],
            aad: &[u8],
            out: &mut [u8],
        ) -> Result<()> {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::InvalidNonce)?;
            if data.len() as u64 > GCM_MAX_PLAINTEXT || out.len() != data.len() + TAG_LEN {
                return Err(Error::PayloadTooLarge);
            }
            let (ct, tag) = out.split_at_mut(data.len());
            self.key
                .seal_out_of_place_scatter(nonce, Aad::from(aad), data, ct, &[], tag)?;
            Ok(())
        }

        /// Decrypts `ciphertext || tag` into `out` (`data.len() - 16` bytes).
        ///
        /// # Errors
        /// [`Error::InvalidNonce`], or [`Error::Authentication`] on any tag failure.
        pub fn decrypt_into(
            &self,
            nonce: &[u8],
            data: &[u8],
            aad: &[u8],
            out: &mut [u8],
        ) -> Result<()> {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::InvalidNonce)?;
            let pt_len = data
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(Error::Authentication)?;
            if out.len() != pt_len {
                return Err(Error::InvalidArgument("output buffer has the wrong length"));
            }
            let (ct, tag) = data.split_at(pt_len);
            if self
                .key
                .open_separate_gather(nonce, Aad::from(aad), ct, tag, out)
                .is_err()
            {
                zeroize::Zeroize::zeroize(out);
                return Err(Error::Authentication);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn key() -> DataKey {
        DataKey::generate(UsageLimits::default()).unwrap()
    }

    #[test]
    fn round_trip_with_aad() {
        let k = key();
        let sealed = k.seal(b"aad", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(k.open(b"aad", &sealed).unwrap(), b"hello");
        assert_eq!(k.open(b"aaX", &sealed), Err(Error::Authentication));
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let k = key();
        let sealed = k.seal(b"", b"").unwrap();
        assert_eq!(sealed.len(), OVERHEAD);
        assert_eq!(k.open(b"", &sealed).unwrap(), b"");
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let k = key();
        let sealed = k.seal(b"a", b"some plaintext").unwrap();
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(k.open(b"a", &bad).is_err(), "bit {i}");
        }
    }

    #[test]
    fn failed_open_zeroizes_output() {
        let k = key();
        let mut sealed = k.seal(b"", b"secret!!").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        let mut out = vec![0xAAu8; 8];
        assert_eq!(
            k.open_into(b"", &sealed, &mut out),
            Err(Error::Authentication)
        );
        assert_eq!(out, vec![0u8; 8]);
    }

    #[test]
    fn wrong_key_length_is_rejected() {
        for n in [0usize, 16, 24, 31, 33, 64] {
            let err = DataKey::from_bytes(&vec![1u8; n], UsageLimits::default()).unwrap_err();
            assert!(matches!(err, Error::InvalidKey(_)));
        }
    }

    #[test]
    fn limits_are_validated() {
        assert!(UsageLimits::new(0, 1).is_err());
        assert!(UsageLimits::new(MAX_MESSAGES_CAP + 1, 1).is_err());
        assert!(UsageLimits::new(MAX_MESSAGES_CAP, 1).is_ok());
    }

    #[test]
    fn message_cap_is_exact_under_contention() {
        let k = Arc::new(DataKey::generate(UsageLimits::new(1000, u64::MAX).unwrap()).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let k = Arc::clone(&k);
                std::thread::spawn(move || {
                    let mut ok = 0u64;
                    for _ in 0..400 {
                        if k.seal(b"", b"x").is_ok() {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000);
        assert_eq!(k.messages_used(), 1000);
        assert!(k.exhausted());
        assert_eq!(k.seal(b"", b"x"), Err(Error::KeyUsageExceeded));
    }

    #[test]
    fn gcm_maximum_is_enforced_before_any_work() {
        let max = GCM_MAX_PLAINTEXT as usize;
        assert_eq!(DataKey::sealed_len(max), Ok(max + OVERHEAD));
        assert_eq!(DataKey::sealed_len(max + 1), Err(Error::PayloadTooLarge));
    }

    #[test]
    fn byte_cap_is_enforced() {
        let k = DataKey::generate(UsageLimits::new(100, 10).unwrap()).unwrap();
        assert!(k.seal(b"", &[0u8; 10]).is_ok());
        assert_eq!(k.seal(b"", b"x"), Err(Error::KeyUsageExceeded));
    }

    #[test]
    fn nonces_do_not_repeat() {
        let k = key();
        let mut seen = HashSet::new();
        for _ in 0..200_000 {
            let s = k.seal(b"", b"").unwrap();
            let mut n = [0u8; NONCE_LEN];
            n.copy_from_slice(&s[..NONCE_LEN]);
            assert!(seen.insert(n));
        }
    }

    #[test]
    fn wrap_and_unwrap() {
        let master = key();
        let dek = key();
        let wrapped = master.wrap_key(&dek, b"ctx").unwrap();
        let back = master
            .unwrap_key(&wrapped, b"ctx", UsageLimits::default())
            .unwrap();
        assert_eq!(back.commitment(), dek.commitment());
        assert!(master
            .unwrap_key(&wrapped, b"other", UsageLimits::default())
            .is_err());
        assert!(master
            .unwrap_key(&wrapped[1..], b"ctx", UsageLimits::default())
            .is_err());
    }

    #[test]
    fn derive_is_deterministic_and_separated() {
        let k = key();
        assert_eq!(*k.derive(b"a").unwrap(), *k.derive(b"a").unwrap());
        assert_ne!(*k.derive(b"a").unwrap(), *k.derive(b"b").unwrap());
    }

    #[test]
    fn debug_is_redacted() {
        let k = DataKey::from_bytes(&[0x41u8; 32], UsageLimits::default()).unwrap();
        let s = format!("{k:?}");
        assert!(s.contains("redacted"));
        assert!(!s.contains("65") && !s.contains("41") && !s.contains("AAAA"));
    }

    #[test]
    fn secret_is_zeroized_on_drop() {
        // Drop the secret holder in place and read the bytes it occupied: ZeroizeOnDrop must
        // have cleared them. ManuallyDrop keeps the storage alive for the read.
        let mut slot = std::mem::ManuallyDrop::new(Zeroizing::new([0x5Au8; KEY_LEN]));
        let ptr: *const [u8; KEY_LEN] = &**slot;
        // SAFETY: `slot` is dropped exactly once here and never used again as a value; its
        // storage stays valid because ManuallyDrop does not free it.
        unsafe { std::mem::ManuallyDrop::drop(&mut slot) };
        // SAFETY: `[u8; 32]` has no drop glue and the storage is still live (see above).
        let after = unsafe { std::ptr::read_volatile(ptr) };
        assert_eq!(after, [0u8; KEY_LEN]);
    }

    #[test]
    fn hazmat_matches_nist_vector() {
        // NIST CAVP gcmEncryptExtIV256.rsp, Count = 0 of [Keylen = 256][IVlen = 96][PTlen = 128]
        // [AADlen = 0][Taglen = 128].
        let key = hex("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22");
        let iv = hex("0d18e06c7c725ac9e362e1ce");
        let pt = hex("2db5168e932556f8089a0622981d017d");
        let ct_tag = hex("fa4362189661d163fcd6a56d8bf0405ad636ac1bbedd5cc3ee727dc2ab4a9489");
        let a = hazmat::CallerNonceAead::new(&key).unwrap();
        let mut out = vec![0u8; pt.len() + TAG_LEN];
        a.encrypt_into(&iv, &pt, b"", &mut out).unwrap();
        assert_eq!(out, ct_tag);
        let mut back = vec![0u8; pt.len()];
        a.decrypt_into(&iv, &ct_tag, b"", &mut back).unwrap();
        assert_eq!(back, pt);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
