//! Wire formats v1 and v2 (normative description: docs/FORMAT.md).
//!
//! Both share one layout; v2 differs in that the commitment is mandatory and that AES-GCM
//! runs under a key derived from the DEK (see [`DataKey::envelope_keys`]), never the DEK.
//!
//! ```text
//! off len  field
//! 0   1    magic 0xFA (never valid in UTF-8, so a stored text value and an envelope differ)
//! 1   1    format version (0x01 or 0x02)
//! 2   1    algorithm (0x01 = AES-256-GCM, random 96-bit nonce, 128-bit tag)
//! 3   1    flags: bits 0-1 key reference kind (1 inline, 2 stored, 3 branch), bit 4 context
//!          digest present, bit 5 key commitment present; every other bit must be 0
//! 4   4    key version, u32 big-endian
//! 8   ..   key reference
//!          stored: DEK id, u64 big-endian (8 bytes)
//!          branch: branch key id, u32 big-endian, + 8-byte random salt (12 bytes); the DEK
//!                  is HKDF(branch key, salt, context), see crate::core::branch
//!          inline: u8 provider length (1..=32) + provider (printable ASCII),
//!                  u16 key id length (1..=2048) + key id (UTF-8),
//!                  u16 wrapped DEK length (1..=4096) + wrapped DEK
//! ..  32   SHA-256 of the canonical context        (if bit 4)
//! ..  32   key commitment                          (if bit 5; mandatory for inline and v2)
//! ..  12   nonce
//! ..  n    ciphertext
//! ..  16   tag
//! ```
//! The AEAD's associated data is `header || u32 len || canonical context || u32 len ||
//! associated data`, so every header byte, the context and the caller's binding (table,
//! column, row) are authenticated. Parsing checks every length against the bytes present
//! before slicing and never allocates from a length field.

use crate::core::aead::{DataKey, NONCE_LEN, OVERHEAD, TAG_LEN};
use crate::core::context;
use crate::core::error::{Error, Result};

/// First byte of every envelope.
pub const MAGIC: u8 = 0xFA;
/// Format version 1: AES-GCM under the DEK, commitment optional except for inline references.
pub const VERSION_1: u8 = 0x01;
/// Format version 2: key-committing, AES-GCM under a key derived from the DEK. Written by
/// default.
pub const VERSION_2: u8 = 0x02;
/// AES-256-GCM with a random 96-bit nonce and a 128-bit tag.
pub const ALG_AES_256_GCM: u8 = 0x01;
/// Key reference kind: the wrapped DEK travels in the envelope.
pub const KIND_INLINE: u8 = 1;
/// Key reference kind: a DEK id pointing into the key store.
pub const KIND_STORED: u8 = 2;
/// Key reference kind: a branch key id and a salt; the DEK is derived from the branch key.
pub const KIND_BRANCH: u8 = 3;
/// Length of the salt of a branch key reference.
pub const BRANCH_SALT_LEN: usize = 8;
const FLAG_KIND_MASK: u8 = 0b0000_0011;
const FLAG_CONTEXT_DIGEST: u8 = 0b0001_0000;
const FLAG_COMMITMENT: u8 = 0b0010_0000;
const FLAG_KNOWN: u8 = FLAG_KIND_MASK | FLAG_CONTEXT_DIGEST | FLAG_COMMITMENT;
/// Longest provider name.
pub const MAX_PROVIDER_LEN: usize = 32;
/// Longest key id (a KMS key ARN is at most 2048 characters).
pub const MAX_KEY_ID_LEN: usize = 2048;
/// Longest wrapped DEK (bounded as Tink does; KMS ciphertext blobs are far shorter).
pub const MAX_WRAPPED_LEN: usize = 4096;
const FIXED_PREFIX: usize = 8;

/// Where the DEK of an envelope comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// The wrapped DEK travels in the envelope.
    Inline {
        /// Key provider name, e.g. `aws-kms` or `local`.
        provider: &'a str,
        /// The wrapping key id (KMS key ARN, local master key id).
        key_id: &'a str,
        /// The DEK as wrapped by the provider.
        wrapped_dek: &'a [u8],
    },
    /// A short id of a DEK row in the key store.
    Stored {
        /// The key-store id.
        dek_id: u64,
    },
    /// A DEK derived from a branch key in the key store (see [`crate::core::branch`]).
    Branch {
        /// The key-store id of the branch key version.
        branch_id: u32,
        /// The random salt the DEK was derived with.
        salt: [u8; BRANCH_SALT_LEN],
    },
}

/// What to write into a header.
#[derive(Debug, Clone, Copy)]
pub struct HeaderSpec<'a> {
    /// Envelope format version to write ([`VERSION_1`] or [`VERSION_2`]).
    pub version: u8,
    /// Key version of the keyring.
    pub key_version: u32,
    /// The key reference.
    pub key_ref: KeyRef<'a>,
    /// Whether to include the SHA-256 of the canonical context.
    pub context_digest: bool,
    /// Whether to include the key commitment (forced on for inline references and for v2).
    pub commitment: bool,
}

/// A parsed envelope, borrowing from the input.
#[derive(Debug, Clone, Copy)]
pub struct Parsed<'a> {
    /// Format version.
    pub version: u8,
    /// Algorithm id.
    pub algorithm: u8,
    /// Key version.
    pub key_version: u32,
    /// Key reference.
    pub key_ref: KeyRef<'a>,
    /// Context digest, if present.
    pub context_digest: Option<&'a [u8]>,
    /// Key commitment, if present.
    pub commitment: Option<&'a [u8]>,
    /// The header bytes (all authenticated).
    pub header: &'a [u8],
    /// `nonce || ciphertext || tag`.
    pub body: &'a [u8],
}

impl Parsed<'_> {
    /// Plaintext length of the envelope.
    pub fn plaintext_len(&self) -> usize {
        self.body.len() - OVERHEAD
    }
}

/// Encodes a header for `key` under `spec`.
///
/// # Errors
/// [`Error::InvalidArgument`] when a reference field is empty or too long,
/// [`Error::InvalidContext`] when `canonical_context` is not canonical.
pub fn encode_header(
    spec: &HeaderSpec<'_>,
    key: &DataKey,
    canonical_context: &[u8],
) -> Result<Vec<u8>> {
    context::validate(canonical_context)?;
    if spec.version != VERSION_1 && spec.version != VERSION_2 {
        return Err(Error::UnsupportedVersion(spec.version));
    }
    let mut flags = 0u8;
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&[MAGIC, spec.version, ALG_AES_256_GCM, 0]);
    out.extend_from_slice(&spec.key_version.to_be_bytes());
    let commitment = match spec.key_ref {
        KeyRef::Stored { dek_id } => {
            flags |= KIND_STORED;
            out.extend_from_slice(&dek_id.to_be_bytes());
            spec.commitment
        }
        KeyRef::Branch { branch_id, salt } => {
            // v1 leaves the commitment out unless asked: the reader derives the DEK from the
            // branch key, this salt and the context it presents. That does not stop a holder
            // of the branch key from building one body that opens under two contexts, which
            // is why v2 always commits.
            flags |= KIND_BRANCH;
            out.extend_from_slice(&branch_id.to_be_bytes());
            out.extend_from_slice(&salt);
            spec.commitment
        }
        KeyRef::Inline {
            provider,
            key_id,
            wrapped_dek,
        } => {
            flags |= KIND_INLINE;
            if provider.is_empty()
                || provider.len() > MAX_PROVIDER_LEN
                || !provider.bytes().all(|b| (0x21..=0x7e).contains(&b))
            {
                return Err(Error::InvalidArgument(
                    "provider must be 1-32 printable ASCII bytes",
                ));
            }
            if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
                return Err(Error::InvalidArgument("key id must be 1-2048 bytes"));
            }
            if wrapped_dek.is_empty() || wrapped_dek.len() > MAX_WRAPPED_LEN {
                return Err(Error::InvalidArgument("wrapped DEK must be 1-4096 bytes"));
            }
            out.push(provider.len() as u8);
            out.extend_from_slice(provider.as_bytes());
            out.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
            out.extend_from_slice(key_id.as_bytes());
            out.extend_from_slice(&(wrapped_dek.len() as u16).to_be_bytes());
            out.extend_from_slice(wrapped_dek);
            // An inline envelope names an arbitrary wrapped key, so it always commits to its DEK.
            true
        }
    };
    if spec.context_digest {
        flags |= FLAG_CONTEXT_DIGEST;
        out.extend_from_slice(&context::digest(canonical_context));
    }
    if commitment || spec.version == VERSION_2 {
        flags |= FLAG_COMMITMENT;
        out.extend_from_slice(&key.commitment_for(spec.version)?);
    }
    out[3] = flags;
    Ok(out)
}

/// Builds the AEAD associated data for an envelope.
pub fn associated_data(header: &[u8], canonical_context: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + canonical_context.len() + extra.len() + 8);
    aad.extend_from_slice(header);
    push_aad_suffix(&mut aad, canonical_context, extra);
    aad
}

/// Appends what follows the header in the associated data: `u32 len || canonical context ||
/// u32 len || extra`.
fn push_aad_suffix(out: &mut Vec<u8>, canonical_context: &[u8], extra: &[u8]) {
    out.extend_from_slice(&(canonical_context.len() as u32).to_be_bytes());
    out.extend_from_slice(canonical_context);
    out.extend_from_slice(&(extra.len() as u32).to_be_bytes());
    out.extend_from_slice(extra);
}

/// Length of an envelope with `header_len` header bytes around `plaintext_len` bytes.
///
/// # Errors
/// [`Error::PayloadTooLarge`] above the GCM maximum.
pub fn envelope_len(header_len: usize, plaintext_len: usize) -> Result<usize> {
    DataKey::sealed_len(plaintext_len)?
        .checked_add(header_len)
        .ok_or(Error::PayloadTooLarge)
}

/// Seals `plaintext` into `out` = `header || nonce || ciphertext || tag`.
///
/// `aad` must come from [`associated_data`] over the same header. The budget must already be
/// reserved (see [`DataKey::reserve_batch`]) when `reserved` is true.
///
/// # Errors
/// As [`DataKey::seal_into`].
pub fn seal_into(
    key: &DataKey,
    header: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    out: &mut [u8],
    reserved: bool,
) -> Result<()> {
    if out.len() != envelope_len(header.len(), plaintext.len())? {
        return Err(Error::InvalidArgument("output buffer has the wrong length"));
    }
    let version = *header
        .get(1)
        .ok_or(Error::InvalidArgument("header too short"))?;
    let (head, body) = out.split_at_mut(header.len());
    head.copy_from_slice(header);
    if reserved {
        key.seal_reserved_for(version, aad, plaintext, body)
    } else {
        key.seal_into_for(version, aad, plaintext, body)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Error::Malformed("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(Error::Malformed("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// Parses an envelope without decrypting it.
///
/// # Errors
/// [`Error::Malformed`], [`Error::UnsupportedVersion`] or [`Error::UnsupportedAlgorithm`].
pub fn parse(envelope: &[u8]) -> Result<Parsed<'_>> {
    let mut r = Reader {
        buf: envelope,
        pos: 0,
    };
    let prefix = r.take(FIXED_PREFIX)?;
    if prefix[0] != MAGIC {
        return Err(Error::Malformed("not an envelope"));
    }
    let version = prefix[1];
    if version != VERSION_1 && version != VERSION_2 {
        return Err(Error::UnsupportedVersion(version));
    }
    if prefix[2] != ALG_AES_256_GCM {
        return Err(Error::UnsupportedAlgorithm(prefix[2]));
    }
    let flags = prefix[3];
    if flags & !FLAG_KNOWN != 0 {
        return Err(Error::Malformed("unknown flags"));
    }
    if version == VERSION_2 && flags & FLAG_COMMITMENT == 0 {
        return Err(Error::Malformed("v2 envelope without key commitment"));
    }
    let key_version = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    let key_ref = match flags & FLAG_KIND_MASK {
        KIND_STORED => {
            let b = r.take(8)?;
            let mut id = [0u8; 8];
            id.copy_from_slice(b);
            KeyRef::Stored {
                dek_id: u64::from_be_bytes(id),
            }
        }
        KIND_BRANCH => {
            let b = r.take(4 + BRANCH_SALT_LEN)?;
            let mut salt = [0u8; BRANCH_SALT_LEN];
            salt.copy_from_slice(&b[4..]);
            KeyRef::Branch {
                branch_id: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                salt,
            }
        }
        KIND_INLINE => {
            if flags & FLAG_COMMITMENT == 0 {
                return Err(Error::Malformed("inline envelope without key commitment"));
            }
            let plen = r.u8()? as usize;
            if plen == 0 || plen > MAX_PROVIDER_LEN {
                return Err(Error::Malformed("bad provider length"));
            }
            let provider = r.take(plen)?;
            if !provider.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return Err(Error::Malformed("bad provider"));
            }
            let klen = r.u16()?;
            if klen == 0 || klen > MAX_KEY_ID_LEN {
                return Err(Error::Malformed("bad key id length"));
            }
            let key_id =
                std::str::from_utf8(r.take(klen)?).map_err(|_| Error::Malformed("bad key id"))?;
            let wlen = r.u16()?;
            if wlen == 0 || wlen > MAX_WRAPPED_LEN {
                return Err(Error::Malformed("bad wrapped key length"));
            }
            let wrapped_dek = r.take(wlen)?;
            KeyRef::Inline {
                // Checked printable ASCII above, so this cannot fail.
                provider: std::str::from_utf8(provider)
                    .map_err(|_| Error::Malformed("bad provider"))?,
                key_id,
                wrapped_dek,
            }
        }
        _ => return Err(Error::Malformed("unknown key reference kind")),
    };
    let context_digest = if flags & FLAG_CONTEXT_DIGEST != 0 {
        Some(r.take(32)?)
    } else {
        None
    };
    let commitment = if flags & FLAG_COMMITMENT != 0 {
        Some(r.take(32)?)
    } else {
        None
    };
    let header_len = r.pos;
    let (header, body) = envelope.split_at(header_len);
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::Malformed("truncated"));
    }
    Ok(Parsed {
        version,
        algorithm: ALG_AES_256_GCM,
        key_version,
        key_ref,
        context_digest,
        commitment,
        header,
        body,
    })
}

/// Checks the commitment and context digest of a parsed envelope against `key` and the
/// expected context, before any decryption happens.
///
/// # Errors
/// [`Error::Authentication`] on any mismatch (opaque by design).
pub fn check_bindings(parsed: &Parsed<'_>, key: &DataKey, canonical_context: &[u8]) -> Result<()> {
    // AWS-LC's CRYPTO_memcmp: constant time in the contents, and a few nanoseconds for 32
    // bytes, where a byte-by-byte comparison with an optimisation barrier per byte is a
    // visible share of a 64-byte open.
    use aws_lc_rs::constant_time::verify_slices_are_equal as same;
    if let Some(c) = parsed.commitment {
        let matches = if parsed.version == VERSION_2 {
            // The derived commitment is kept with the key: compared in place, not recomputed.
            let keys = key.envelope_keys().map_err(|_| Error::Authentication)?;
            same(c, keys.commitment())
        } else {
            same(c, &key.commitment())
        };
        matches.map_err(|_| Error::Authentication)?;
    }
    if let Some(d) = parsed.context_digest {
        same(d, &context::digest(canonical_context)).map_err(|_| Error::Authentication)?;
    }
    Ok(())
}

/// Opens a parsed envelope into `out` (`parsed.plaintext_len()` bytes).
///
/// # Errors
/// [`Error::Authentication`] on any failure of the commitment, context or tag.
pub fn open_into(
    key: &DataKey,
    parsed: &Parsed<'_>,
    canonical_context: &[u8],
    extra_aad: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let ctx_len = (canonical_context.len() as u32).to_be_bytes();
    let extra_len = (extra_aad.len() as u32).to_be_bytes();
    open_with_aad_parts(
        key,
        parsed,
        canonical_context,
        &[&ctx_len, canonical_context, &extra_len, extra_aad],
        out,
    )
}

/// The associated data of an envelope after its header: `u32 len || canonical context || u32
/// len || extra`. It is the same for every value of a column, so a per-column opener builds it
/// once and passes it to [`open_into_with_suffix`].
pub fn aad_suffix(canonical_context: &[u8], extra_aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(canonical_context.len() + extra_aad.len() + 8);
    push_aad_suffix(&mut out, canonical_context, extra_aad);
    out
}

/// [`open_into`] with the associated data after the header prebuilt by [`aad_suffix`] from
/// the same `canonical_context`.
///
/// # Errors
/// As [`open_into`].
pub fn open_into_with_suffix(
    key: &DataKey,
    parsed: &Parsed<'_>,
    canonical_context: &[u8],
    suffix: &[u8],
    out: &mut [u8],
) -> Result<()> {
    open_with_aad_parts(key, parsed, canonical_context, &[suffix], out)
}

fn open_with_aad_parts(
    key: &DataKey,
    parsed: &Parsed<'_>,
    canonical_context: &[u8],
    parts: &[&[u8]],
    out: &mut [u8],
) -> Result<()> {
    if let Err(e) = check_bindings(parsed, key, canonical_context) {
        crate::core::stats::record_open_failure(&e);
        return Err(e);
    }
    let total = parts.iter().fold(parsed.header.len(), |n, p| n + p.len());
    if total <= STACK_AAD {
        // Short values (the PII case) build their associated data on the stack: a heap
        // allocation here is a visible share of a 64-byte open.
        let mut buf = [0u8; STACK_AAD];
        buf[..parsed.header.len()].copy_from_slice(parsed.header);
        let mut pos = parsed.header.len();
        for part in parts {
            buf[pos..pos + part.len()].copy_from_slice(part);
            pos += part.len();
        }
        return key.open_into_for(parsed.version, &buf[..pos], parsed.body, out);
    }
    let mut aad = Vec::with_capacity(total);
    aad.extend_from_slice(parsed.header);
    for part in parts {
        aad.extend_from_slice(part);
    }
    key.open_into_for(parsed.version, &aad, parsed.body, out)
}

/// Associated data up to this size is built on the stack when opening.
const STACK_AAD: usize = 256;

/// Calls `f` with the cache id of the DEK an envelope refers to when opened under
/// `canonical_context` (see [`key_ref_id`] and [`branch_dek_id`]), built on the stack for
/// stored and short branch references.
pub fn with_key_ref_id<R>(
    parsed: &Parsed<'_>,
    canonical_context: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    match parsed.key_ref {
        KeyRef::Stored { dek_id } => {
            let mut id = [0u8; 9];
            id[0] = KIND_STORED;
            id[1..].copy_from_slice(&dek_id.to_be_bytes());
            f(&id)
        }
        KeyRef::Branch { branch_id, salt } => {
            if canonical_context.len() <= BRANCH_ID_INLINE_CONTEXT {
                let mut id = [0u8; BRANCH_ID_PREFIX + 1 + BRANCH_ID_INLINE_CONTEXT];
                let n = write_branch_dek_id(&mut id, branch_id, &salt, canonical_context);
                f(&id[..n])
            } else {
                f(&branch_dek_id(branch_id, &salt, canonical_context))
            }
        }
        KeyRef::Inline { .. } => f(&key_ref_id(parsed)),
    }
}

/// Kind byte, branch id and salt: the part of a branch DEK's cache id that names the branch
/// key (a shredded branch key's DEKs are dropped by this prefix).
const BRANCH_ID_PREFIX: usize = 1 + 4 + BRANCH_SALT_LEN;
/// Contexts up to this length are part of a branch DEK's cache id as they are; longer ones
/// are replaced by their SHA-256, so an id stays small whatever the context.
const BRANCH_ID_INLINE_CONTEXT: usize = 192;

fn write_branch_dek_id(out: &mut [u8], branch_id: u32, salt: &[u8; 8], ctx: &[u8]) -> usize {
    out[0] = KIND_BRANCH;
    out[1..5].copy_from_slice(&branch_id.to_be_bytes());
    out[5..BRANCH_ID_PREFIX].copy_from_slice(salt);
    // A tag byte keeps the two forms apart: 0 = the context itself, 1 = its digest.
    if ctx.len() <= BRANCH_ID_INLINE_CONTEXT {
        out[BRANCH_ID_PREFIX] = 0;
        out[BRANCH_ID_PREFIX + 1..BRANCH_ID_PREFIX + 1 + ctx.len()].copy_from_slice(ctx);
        BRANCH_ID_PREFIX + 1 + ctx.len()
    } else {
        out[BRANCH_ID_PREFIX] = 1;
        out[BRANCH_ID_PREFIX + 1..BRANCH_ID_PREFIX + 33].copy_from_slice(&context::digest(ctx));
        BRANCH_ID_PREFIX + 33
    }
}

/// The cache id of a DEK derived from branch key `branch_id` with `salt` for a context.
///
/// The context is part of the id because the DEK depends on it: an envelope opened under
/// another context derives another key, which must never replace (or be served as) the
/// first one.
pub fn branch_dek_id(
    branch_id: u32,
    salt: &[u8; BRANCH_SALT_LEN],
    canonical_context: &[u8],
) -> Vec<u8> {
    let mut id = [0u8; BRANCH_ID_PREFIX + 1 + BRANCH_ID_INLINE_CONTEXT];
    let n = write_branch_dek_id(&mut id, branch_id, salt, canonical_context);
    id[..n].to_vec()
}

/// The cache-id prefix shared by every DEK derived from branch key `branch_id`.
pub fn branch_id_prefix(branch_id: u32) -> [u8; 5] {
    let mut p = [KIND_BRANCH, 0, 0, 0, 0];
    p[1..].copy_from_slice(&branch_id.to_be_bytes());
    p
}

/// Seals into a new vector (for the core's tests and Rust callers).
///
/// # Errors
/// As [`encode_header`] and [`seal_into`].
pub fn seal(
    key: &DataKey,
    spec: &HeaderSpec<'_>,
    canonical_context: &[u8],
    extra_aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let header = encode_header(spec, key, canonical_context)?;
    let aad = associated_data(&header, canonical_context, extra_aad);
    let mut out = vec![0u8; envelope_len(header.len(), plaintext.len())?];
    seal_into(key, &header, &aad, plaintext, &mut out, false)?;
    Ok(out)
}

/// Parses and opens into a new vector.
///
/// # Errors
/// As [`parse`] and [`open_into`].
pub fn open(
    key: &DataKey,
    envelope: &[u8],
    canonical_context: &[u8],
    extra_aad: &[u8],
) -> Result<Vec<u8>> {
    let parsed = parse(envelope)?;
    let mut out = vec![0u8; parsed.plaintext_len()];
    open_into(key, &parsed, canonical_context, extra_aad, &mut out)?;
    Ok(out)
}

/// A data key bound to one header and one context, ready to seal many values quickly.
///
/// The header and the context part of the associated data are computed once, so sealing a
/// short value costs one AEAD call and one small copy. This is what the service caches.
#[derive(Debug)]
pub struct Sealer {
    key: std::sync::Arc<DataKey>,
    header: Vec<u8>,
    /// `header || u32 len || context`, the fixed prefix of every associated data.
    aad_prefix: Vec<u8>,
    /// The whole associated data of a value with no extra binding (the common case), kept so
    /// that sealing such a value allocates nothing besides its output.
    aad_empty: Vec<u8>,
}

impl crate::core::cache::Cached for Sealer {
    fn data_key(&self) -> &DataKey {
        &self.key
    }
}

impl Sealer {
    /// Binds `key` to a header built from `spec` and to `canonical_context`.
    ///
    /// # Errors
    /// As [`encode_header`].
    pub fn new(
        key: std::sync::Arc<DataKey>,
        spec: &HeaderSpec<'_>,
        canonical_context: &[u8],
    ) -> Result<Self> {
        let header = encode_header(spec, &key, canonical_context)?;
        let aad_empty = associated_data(&header, canonical_context, b"");
        // The prefix is the same without the trailing empty-extra length, re-appended per value.
        let aad_prefix = aad_empty[..aad_empty.len() - 4].to_vec();
        Ok(Sealer {
            key,
            header,
            aad_prefix,
            aad_empty,
        })
    }

    /// The data key.
    pub fn key(&self) -> &std::sync::Arc<DataKey> {
        &self.key
    }

    /// The header bytes every envelope from this sealer starts with.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Envelope length for a plaintext of `plaintext_len` bytes.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`] above the GCM maximum.
    pub fn envelope_len(&self, plaintext_len: usize) -> Result<usize> {
        envelope_len(self.header.len(), plaintext_len)
    }

    /// The associated data for a value bound to `extra`.
    pub fn aad(&self, extra: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.aad_prefix.len() + 4 + extra.len());
        aad.extend_from_slice(&self.aad_prefix);
        aad.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        aad.extend_from_slice(extra);
        aad
    }

    /// Seals one value into `out` (see [`Sealer::envelope_len`]).
    ///
    /// # Errors
    /// As [`DataKey::seal_into`].
    pub fn seal_into(
        &self,
        extra: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
        reserved: bool,
    ) -> Result<()> {
        if extra.is_empty() {
            let aad = &self.aad_empty;
            return seal_into(&self.key, &self.header, aad, plaintext, out, reserved);
        }
        seal_into(
            &self.key,
            &self.header,
            &self.aad(extra),
            plaintext,
            out,
            reserved,
        )
    }

    /// Seals one value into a new vector.
    ///
    /// # Errors
    /// As [`DataKey::seal_into`].
    pub fn seal(&self, extra: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.envelope_len(plaintext.len())?];
        self.seal_into(extra, plaintext, &mut out, false)?;
        Ok(out)
    }
}

/// The cache id of the DEK an envelope refers to: the key-reference kind followed by the
/// key-reference bytes of the header. Equal ids mean the same wrapped or stored DEK.
pub fn key_ref_id(parsed: &Parsed<'_>) -> Vec<u8> {
    match parsed.key_ref {
        KeyRef::Stored { dek_id } => stored_id(dek_id),
        KeyRef::Branch { branch_id, salt } => {
            // Without a context this is only the prefix of the cache id (see branch_dek_id).
            let mut id = Vec::with_capacity(BRANCH_ID_PREFIX);
            id.push(KIND_BRANCH);
            id.extend_from_slice(&branch_id.to_be_bytes());
            id.extend_from_slice(&salt);
            id
        }
        KeyRef::Inline {
            provider,
            key_id,
            wrapped_dek,
        } => inline_id(provider, key_id, wrapped_dek),
    }
}

/// The cache id of a stored DEK (see [`key_ref_id`]).
pub fn stored_id(dek_id: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(9);
    id.push(KIND_STORED);
    id.extend_from_slice(&dek_id.to_be_bytes());
    id
}

/// The cache id of an inline wrapped DEK (see [`key_ref_id`]).
pub fn inline_id(provider: &str, key_id: &str, wrapped_dek: &[u8]) -> Vec<u8> {
    let mut id = Vec::with_capacity(8 + provider.len() + key_id.len() + wrapped_dek.len());
    id.push(KIND_INLINE);
    id.push(provider.len() as u8);
    id.extend_from_slice(provider.as_bytes());
    id.extend_from_slice(&(key_id.len() as u32).to_be_bytes());
    id.extend_from_slice(key_id.as_bytes());
    id.extend_from_slice(wrapped_dek);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::aead::UsageLimits;

    fn dek() -> DataKey {
        DataKey::generate(UsageLimits::default()).unwrap()
    }

    fn ctx() -> Vec<u8> {
        context::encode([("tenant_id", "t1"), ("data_class", "pii")]).unwrap()
    }

    fn inline_spec(wrapped: &[u8]) -> HeaderSpec<'_> {
        HeaderSpec {
            version: crate::core::envelope::VERSION_1,
            key_version: 3,
            key_ref: KeyRef::Inline {
                provider: "local",
                key_id: "master-1",
                wrapped_dek: wrapped,
            },
            context_digest: true,
            commitment: true,
        }
    }

    fn stored_spec() -> HeaderSpec<'static> {
        HeaderSpec {
            version: crate::core::envelope::VERSION_1,
            key_version: 1,
            key_ref: KeyRef::Stored { dek_id: 42 },
            context_digest: false,
            commitment: false,
        }
    }

    fn v2(spec: HeaderSpec<'_>) -> HeaderSpec<'_> {
        HeaderSpec {
            version: VERSION_2,
            ..spec
        }
    }

    #[test]
    fn v2_commits_and_stays_compact() {
        let k = dek();
        let env = seal(&k, &v2(stored_spec()), &ctx(), b"row", &[7u8; 16]).unwrap();
        // 8 fixed + 8 id + 32 commitment + 12 nonce + 16 ciphertext + 16 tag.
        assert_eq!(env.len(), 92);
        let p = parse(&env).unwrap();
        assert_eq!(p.version, VERSION_2);
        assert_eq!(
            p.commitment.unwrap(),
            &k.commitment_for(VERSION_2).unwrap()[..]
        );
        assert_eq!(open(&k, &env, &ctx(), b"row").unwrap(), vec![7u8; 16]);
        // Another DEK fails at the commitment, before any decryption.
        assert_eq!(
            open(&dek(), &env, &ctx(), b"row").unwrap_err(),
            Error::Authentication
        );
    }

    #[test]
    fn v2_separates_the_aead_key_from_the_dek() {
        let k = dek();
        assert_ne!(
            k.commitment_for(VERSION_1).unwrap(),
            k.commitment_for(VERSION_2).unwrap()
        );
        let env = seal(&k, &v2(stored_spec()), &ctx(), b"", b"secret").unwrap();
        let p = parse(&env).unwrap();
        let aad = associated_data(p.header, &ctx(), b"");
        // The body does not open under the DEK itself: AES-GCM ran under the derived key.
        let mut out = vec![0u8; p.plaintext_len()];
        assert_eq!(
            k.open_into(&aad, p.body, &mut out).unwrap_err(),
            Error::Authentication
        );
        k.open_into_for(VERSION_2, &aad, p.body, &mut out).unwrap();
        assert_eq!(out, b"secret");
    }

    #[test]
    fn v2_without_commitment_is_rejected() {
        let k = dek();
        let env = seal(&k, &v2(stored_spec()), &ctx(), b"", b"x").unwrap();
        let mut bad = env.clone();
        bad[3] &= !FLAG_COMMITMENT;
        assert_eq!(
            parse(&bad).unwrap_err(),
            Error::Malformed("v2 envelope without key commitment")
        );
    }

    #[test]
    fn v2_every_truncation_and_bit_flip_rejected() {
        let k = dek();
        for spec in [v2(stored_spec()), v2(inline_spec(b"wrapped"))] {
            let env = seal(&k, &spec, &ctx(), b"aad", b"payload").unwrap();
            for cut in 0..env.len() {
                assert!(open(&k, &env[..cut], &ctx(), b"aad").is_err());
            }
            for i in 0..env.len() {
                for bit in 0..8 {
                    let mut bad = env.clone();
                    bad[i] ^= 1 << bit;
                    assert!(
                        open(&k, &bad, &ctx(), b"aad").is_err(),
                        "byte {i} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn v1_and_v2_of_one_key_open_side_by_side() {
        let k = dek();
        let old = seal(&k, &stored_spec(), &ctx(), b"", b"one").unwrap();
        let new = seal(&k, &v2(stored_spec()), &ctx(), b"", b"two").unwrap();
        assert_eq!(open(&k, &old, &ctx(), b"").unwrap(), b"one");
        assert_eq!(open(&k, &new, &ctx(), b"").unwrap(), b"two");
        // Relabelling a v2 envelope as v1 (or back) changes an authenticated header byte.
        let mut relabelled = new.clone();
        relabelled[1] = VERSION_1;
        assert!(open(&k, &relabelled, &ctx(), b"").is_err());
    }

    #[test]
    fn prebuilt_aad_suffix_opens_what_open_into_opens() {
        let k = dek();
        for (extra, pt) in [
            (&b"users|email"[..], &[5u8; 64][..]),
            (&[b'x'; 300][..], b""),
        ] {
            let env = seal(&k, &stored_spec(), &ctx(), extra, pt).unwrap();
            let p = parse(&env).unwrap();
            let mut out = vec![0u8; p.plaintext_len()];
            open_into_with_suffix(&k, &p, &ctx(), &aad_suffix(&ctx(), extra), &mut out).unwrap();
            assert_eq!(out, pt);
            // Another binding, or the same bytes split differently between context and
            // extra, is another suffix and fails like open_into does.
            let mut out = vec![0u8; p.plaintext_len()];
            assert_eq!(
                open_into_with_suffix(&k, &p, &ctx(), &aad_suffix(&ctx(), b"other"), &mut out),
                Err(Error::Authentication)
            );
            let moved = aad_suffix(
                &ctx()[..ctx().len() - 1],
                &[&ctx()[ctx().len() - 1..], extra].concat(),
            );
            assert_eq!(
                open_into_with_suffix(&k, &p, &ctx(), &moved, &mut out),
                Err(Error::Authentication)
            );
        }
    }

    #[test]
    fn stored_envelope_is_compact() {
        let k = dek();
        let env = seal(&k, &stored_spec(), &ctx(), b"", &[7u8; 16]).unwrap();
        assert_eq!(env.len(), 60);
        assert_eq!(open(&k, &env, &ctx(), b"").unwrap(), vec![7u8; 16]);
        let p = parse(&env).unwrap();
        assert_eq!(p.key_ref, KeyRef::Stored { dek_id: 42 });
        assert_eq!(p.key_version, 1);
    }

    #[test]
    fn inline_round_trip_and_fields() {
        let k = dek();
        let wrapped = [9u8; 40];
        let env = seal(&k, &inline_spec(&wrapped), &ctx(), b"row", b"hello").unwrap();
        let p = parse(&env).unwrap();
        assert_eq!(p.key_version, 3);
        assert!(matches!(
            p.key_ref,
            KeyRef::Inline {
                provider: "local",
                key_id: "master-1",
                ..
            }
        ));
        assert_eq!(p.context_digest.unwrap(), &context::digest(&ctx())[..]);
        assert_eq!(open(&k, &env, &ctx(), b"row").unwrap(), b"hello");
        assert_eq!(
            open(&k, &env, &ctx(), b"other row"),
            Err(Error::Authentication)
        );
        let other = context::encode([("tenant_id", "t2"), ("data_class", "pii")]).unwrap();
        assert_eq!(open(&k, &env, &other, b"row"), Err(Error::Authentication));
    }

    #[test]
    fn wrong_key_fails_commitment() {
        let k = dek();
        let env = seal(&k, &inline_spec(&[1u8; 8]), &ctx(), b"", b"x").unwrap();
        assert_eq!(open(&dek(), &env, &ctx(), b""), Err(Error::Authentication));
    }

    #[test]
    fn every_truncation_and_bit_flip_rejected() {
        let k = dek();
        for spec in [inline_spec(&[5u8; 20]), stored_spec()] {
            let env = seal(&k, &spec, &ctx(), b"", b"plaintext!").unwrap();
            for n in 0..env.len() {
                assert!(
                    open(&k, &env[..n], &ctx(), b"").is_err(),
                    "truncated at {n}"
                );
            }
            for bit in 0..env.len() * 8 {
                let mut bad = env.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(open(&k, &bad, &ctx(), b"").is_err(), "bit {bit}");
            }
            for extra in [1usize, 12, 20] {
                let mut long = env.clone();
                long.extend(std::iter::repeat_n(0u8, extra));
                assert!(open(&k, &long, &ctx(), b"").is_err(), "trailing {extra}");
            }
        }
    }

    #[test]
    fn versions_and_algorithms_outside_allow_list() {
        let k = dek();
        let env = seal(&k, &stored_spec(), &ctx(), b"", b"x").unwrap();
        for v in [0u8, 3, 0xff] {
            let mut bad = env.clone();
            bad[1] = v;
            assert_eq!(parse(&bad).unwrap_err(), Error::UnsupportedVersion(v));
        }
        let mut bad = env.clone();
        bad[2] = 2;
        assert_eq!(parse(&bad).unwrap_err(), Error::UnsupportedAlgorithm(2));
    }

    #[test]
    fn inline_without_commitment_is_rejected() {
        let k = dek();
        let mut env = seal(&k, &inline_spec(&[1u8; 8]), &ctx(), b"", b"x").unwrap();
        env[3] &= !FLAG_COMMITMENT;
        assert!(matches!(parse(&env), Err(Error::Malformed(_))));
    }

    #[test]
    fn sealer_matches_one_shot() {
        let k = std::sync::Arc::new(dek());
        let s = Sealer::new(std::sync::Arc::clone(&k), &stored_spec(), &ctx()).unwrap();
        let env = s.seal(b"row-1", b"value").unwrap();
        assert_eq!(&env[..s.header().len()], s.header());
        assert_eq!(open(&k, &env, &ctx(), b"row-1").unwrap(), b"value");
        assert!(open(&k, &env, &ctx(), b"row-2").is_err());
        let p = parse(&env).unwrap();
        assert_eq!(key_ref_id(&p), stored_id(42));
    }

    #[test]
    fn stack_and_heap_aad_paths_agree() {
        let k = dek();
        let big = vec![7u8; 2000];
        for extra in [&b""[..], b"row", &big[..]] {
            let env = seal(&k, &stored_spec(), &ctx(), extra, b"v").unwrap();
            assert_eq!(open(&k, &env, &ctx(), extra).unwrap(), b"v");
            let p = parse(&env).unwrap();
            assert_eq!(
                with_key_ref_id(&p, &ctx(), |id| id.to_vec()),
                key_ref_id(&p)
            );
        }
    }

    #[test]
    fn huge_length_fields_do_not_allocate() {
        let mut env = vec![
            MAGIC,
            VERSION_1,
            ALG_AES_256_GCM,
            KIND_INLINE | FLAG_COMMITMENT,
            0,
            0,
            0,
            1,
        ];
        env.push(5);
        env.extend_from_slice(b"local");
        env.extend_from_slice(&[0xff, 0xff]);
        assert!(matches!(parse(&env), Err(Error::Malformed(_))));
    }

    #[test]
    fn header_field_bounds() {
        let k = dek();
        let long = "x".repeat(MAX_KEY_ID_LEN + 1);
        let bad = HeaderSpec {
            version: crate::core::envelope::VERSION_1,
            key_version: 1,
            key_ref: KeyRef::Inline {
                provider: "p",
                key_id: &long,
                wrapped_dek: b"w",
            },
            context_digest: false,
            commitment: true,
        };
        assert!(encode_header(&bad, &k, &ctx()).is_err());
        assert!(encode_header(&stored_spec(), &k, b"\x00").is_err());
    }
}
