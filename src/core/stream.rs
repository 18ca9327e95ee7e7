//! Stream format v1: segmented AES-256-GCM for large objects (normative description:
//! docs/FORMAT.md, "Stream format v1").
//!
//! A construction of the STREAM family (online authenticated encryption in segments): each
//! segment is sealed on its own, so memory stays constant, any byte range decrypts by opening
//! only the segments it covers, and the nonce of every segment encodes its position and
//! whether it is the last one, so truncation, reordering, duplication and extension fail.
//!
//! ```text
//! off   len  field
//! 0     1    magic 0xFB (distinct from envelope v1's 0xFA; never valid in UTF-8)
//! 1     1    format version 0x01
//! 2     1    algorithm 0x01 (HKDF-SHA256 per-stream key, AES-256-GCM segments)
//! 3     1    flags, must be 0
//! 4     4    segment size (plaintext bytes per segment), u32 big-endian, 2^16 ..= 2^24
//! 8     2    key reference length n, u16 big-endian, 1 ..= 8192
//! 10    n    key reference: an envelope v1 header (key version, stored or inline DEK, optional
//!            context digest and key commitment), exactly as the envelope module writes it
//! 10+n  32   salt (random)
//! 42+n  7    nonce prefix (random)
//! 49+n  32   header tag
//! 81+n  ..   segments: ciphertext || 16-byte tag; every segment but the last carries exactly
//!            `segment size` plaintext bytes, the last 0 ..= `segment size`
//! ```
//!
//! Key schedule: `okm = HKDF-SHA256(ikm = DEK, salt = salt, info = LABEL || SHA-256(header
//! without its tag || u32 len || canonical context || u32 len || associated data), L = 64)`;
//! the first 32 bytes are the stream key, the last 32 the header tag. The tag is compared in
//! constant time before any segment is opened, so a changed header byte, another context or
//! another binding (such as an S3 bucket and key) fails at once, and because HKDF is a PRF of
//! the DEK the tag also commits the stream to its DEK.
//!
//! Segment `i` uses the nonce `prefix (7) || i as u32 big-endian (4) || last (1: 0x01 for the
//! final segment, else 0x00)` and empty associated data (everything is bound in the key).
//!
//! Nonces here are derived, not random, and that is safe: the stream key is fresh for every
//! stream (a random 256-bit salt through HKDF), and within one stream the counter never
//! repeats because an [`Encryptor`] only moves forward and refuses to seal after the final
//! segment or past 2^32 segments. So `LessSafeKey` is used with nonces unique by construction;
//! no caller can pass a nonce.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::{digest, hkdf};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::core::aead::{DataKey, NONCE_LEN, OVERHEAD, TAG_LEN};
use crate::core::context;
use crate::core::envelope;
use crate::core::error::{Error, Result};
use crate::core::pool;

/// First byte of every stream.
pub const MAGIC: u8 = 0xFB;
/// The stream format version this module writes.
pub const VERSION_1: u8 = 0x01;
/// HKDF-SHA256 per-stream key, AES-256-GCM segments, STREAM nonces.
pub const ALG_AES_256_GCM_HKDF: u8 = 0x01;
/// Smallest segment size (plaintext bytes).
pub const MIN_SEGMENT: usize = 1 << 16;
/// Largest segment size (plaintext bytes).
pub const MAX_SEGMENT: usize = 1 << 24;
/// Default segment size.
pub const DEFAULT_SEGMENT: usize = 1 << 20;
/// Salt length.
pub const SALT_LEN: usize = 32;
/// Nonce prefix length.
pub const PREFIX_LEN: usize = 7;
/// Header tag length.
pub const HEADER_TAG_LEN: usize = 32;
/// Bytes before the key reference.
pub const FIXED_LEN: usize = 10;
/// Longest key reference (an inline envelope header is at most about 6.2 KiB).
pub const MAX_KEY_REF_LEN: usize = 8192;
/// Most segments in one stream (the counter is 32 bits).
pub const MAX_SEGMENTS: u64 = 1 << 32;
/// Bytes a segment adds to its plaintext.
pub const SEGMENT_OVERHEAD: usize = TAG_LEN;

const LABEL: &[u8] = b"greenlang-crypto/stream/v1";

struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// A parsed stream header, borrowing from the input.
#[derive(Debug, Clone, Copy)]
pub struct StreamHeader<'a> {
    /// Plaintext bytes per segment.
    pub segment_size: usize,
    /// The embedded envelope v1 header naming the DEK.
    pub key_ref: &'a [u8],
    /// HKDF salt.
    pub salt: &'a [u8],
    /// Nonce prefix.
    pub prefix: &'a [u8],
    /// Header tag.
    pub tag: &'a [u8],
    /// The whole header, tag included.
    pub bytes: &'a [u8],
}

fn check_segment_size(segment_size: usize) -> Result<()> {
    if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&segment_size) {
        return Err(Error::InvalidArgument(
            "segment size must be in 65536..=16777216",
        ));
    }
    Ok(())
}

/// Total header length announced by the first [`FIXED_LEN`] bytes of a stream.
///
/// # Errors
/// [`Error::Malformed`] on a bad magic, flags, segment size or key-reference length (or fewer
/// than [`FIXED_LEN`] bytes), [`Error::UnsupportedVersion`], [`Error::UnsupportedAlgorithm`].
pub fn header_len(prefix: &[u8]) -> Result<usize> {
    let fixed = prefix
        .get(..FIXED_LEN)
        .ok_or(Error::Malformed("truncated"))?;
    if fixed[0] != MAGIC {
        return Err(Error::Malformed("not a stream"));
    }
    if fixed[1] != VERSION_1 {
        return Err(Error::UnsupportedVersion(fixed[1]));
    }
    if fixed[2] != ALG_AES_256_GCM_HKDF {
        return Err(Error::UnsupportedAlgorithm(fixed[2]));
    }
    if fixed[3] != 0 {
        return Err(Error::Malformed("unknown flags"));
    }
    let seg = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]) as usize;
    if check_segment_size(seg).is_err() {
        return Err(Error::Malformed("bad segment size"));
    }
    let n = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
    if n == 0 || n > MAX_KEY_REF_LEN {
        return Err(Error::Malformed("bad key reference length"));
    }
    Ok(FIXED_LEN + n + SALT_LEN + PREFIX_LEN + HEADER_TAG_LEN)
}

/// Parses the header at the start of `bytes` (trailing bytes are allowed and ignored).
///
/// # Errors
/// As [`header_len`], and [`Error::Malformed`] when the key reference is not one complete
/// envelope v1 header.
pub fn parse_header(bytes: &[u8]) -> Result<StreamHeader<'_>> {
    let len = header_len(bytes)?;
    let h = bytes.get(..len).ok_or(Error::Malformed("truncated"))?;
    let seg = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let key_end = len - SALT_LEN - PREFIX_LEN - HEADER_TAG_LEN;
    let key_ref = &h[FIXED_LEN..key_end];
    check_key_ref(key_ref)?;
    Ok(StreamHeader {
        segment_size: seg,
        key_ref,
        salt: &h[key_end..key_end + SALT_LEN],
        prefix: &h[key_end + SALT_LEN..key_end + SALT_LEN + PREFIX_LEN],
        tag: &h[len - HEADER_TAG_LEN..],
        bytes: h,
    })
}

/// The key reference padded into an (empty-bodied) envelope, which the envelope parser and
/// the service's key resolution accept as is.
pub fn key_ref_envelope(key_ref: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(key_ref.len() + OVERHEAD);
    v.extend_from_slice(key_ref);
    v.resize(key_ref.len() + OVERHEAD, 0);
    v
}

fn check_key_ref(key_ref: &[u8]) -> Result<()> {
    if key_ref.is_empty() || key_ref.len() > MAX_KEY_REF_LEN {
        return Err(Error::Malformed("bad key reference length"));
    }
    let padded = key_ref_envelope(key_ref);
    let parsed = envelope::parse(&padded)?;
    if parsed.header.len() != key_ref.len() {
        return Err(Error::Malformed("bad key reference"));
    }
    Ok(())
}

/// Ciphertext length of a stream of `plaintext_len` bytes (header included).
///
/// # Errors
/// [`Error::InvalidArgument`] on a bad segment size, [`Error::PayloadTooLarge`] beyond 2^32
/// segments.
pub fn stream_len(header_len: usize, segment_size: usize, plaintext_len: u64) -> Result<u64> {
    check_segment_size(segment_size)?;
    let segments = plaintext_len.div_ceil(segment_size as u64).max(1);
    if segments > MAX_SEGMENTS {
        return Err(Error::PayloadTooLarge);
    }
    plaintext_len
        .checked_add(segments * TAG_LEN as u64)
        .and_then(|n| n.checked_add(header_len as u64))
        .ok_or(Error::PayloadTooLarge)
}

/// Plaintext length of a stream whose total length is `total_len`, and its segment count.
///
/// # Errors
/// [`Error::Authentication`] when no stream of this header can have that length (a cut inside
/// a tag, or no final segment at all).
pub fn plaintext_len(header_len: usize, segment_size: usize, total_len: u64) -> Result<(u64, u64)> {
    let body = total_len
        .checked_sub(header_len as u64)
        .ok_or(Error::Authentication)?;
    let sealed_seg = (segment_size + TAG_LEN) as u64;
    let segments = body.div_ceil(sealed_seg);
    let last = body - (segments.saturating_sub(1)) * sealed_seg;
    if segments == 0 || last < TAG_LEN as u64 || segments > MAX_SEGMENTS {
        return Err(Error::Authentication);
    }
    Ok((body - segments * TAG_LEN as u64, segments))
}

fn derive(
    dek: &DataKey,
    header_without_tag: &[u8],
    salt: &[u8],
    canonical_context: &[u8],
    aad: &[u8],
) -> Result<(LessSafeKey, Zeroizing<[u8; HEADER_TAG_LEN]>)> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(header_without_tag);
    ctx.update(&(canonical_context.len() as u32).to_be_bytes());
    ctx.update(canonical_context);
    ctx.update(&(aad.len() as u32).to_be_bytes());
    ctx.update(aad);
    let binding = ctx.finish();
    let info = [LABEL, binding.as_ref()];
    let mut okm = Zeroizing::new([0u8; 64]);
    dek.with_secret(|secret| -> Result<()> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&secret[..]);
        prk.expand(&info, OkmLen(64))?.fill(&mut okm[..])?;
        Ok(())
    })?;
    let unbound =
        UnboundKey::new(&AES_256_GCM, &okm[..32]).map_err(|_| Error::InvalidKey("key rejected"))?;
    let mut tag = Zeroizing::new([0u8; HEADER_TAG_LEN]);
    tag.copy_from_slice(&okm[32..]);
    Ok((LessSafeKey::new(unbound), tag))
}

fn nonce(prefix: &[u8; PREFIX_LEN], index: u64, last: bool) -> Result<Nonce> {
    let counter = u32::try_from(index).map_err(|_| Error::PayloadTooLarge)?;
    let mut n = [0u8; NONCE_LEN];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&counter.to_be_bytes());
    n[NONCE_LEN - 1] = u8::from(last);
    Ok(Nonce::assume_unique_for_key(n))
}

/// Number of segments in a run of `pt_len` plaintext bytes.
fn plan(pt_len: usize, seg: usize, last: bool) -> Result<usize> {
    if last {
        Ok(pt_len.div_ceil(seg).max(1))
    } else if pt_len % seg != 0 {
        Err(Error::InvalidArgument(
            "a run that is not the last must hold whole segments",
        ))
    } else {
        Ok(pt_len / seg)
    }
}

fn for_chunks_seq<F>(
    out: &mut [u8],
    chunk: usize,
    count: usize,
    base: usize,
    work: &F,
) -> Result<()>
where
    F: Fn(usize, &mut [u8]) -> Result<()> + Sync,
{
    let mut rest: &mut [u8] = out;
    for i in 0..count {
        let take = if i + 1 == count { rest.len() } else { chunk };
        let (a, r) = std::mem::take(&mut rest).split_at_mut(take);
        work(base + i, a)?;
        rest = r;
    }
    Ok(())
}

/// Runs `work(index within the run, output chunk)` over `count` chunks of `out`, each `chunk`
/// bytes long except the last, which takes the rest; on up to `threads` threads (the caller
/// and pool workers, see `crate::core::pool`), each claiming the next chunk in turn, so a
/// worker that wakes late takes fewer.
fn for_chunks<F>(out: &mut [u8], chunk: usize, count: usize, threads: usize, work: &F) -> Result<()>
where
    F: Fn(usize, &mut [u8]) -> Result<()> + Sync,
{
    let threads = threads.clamp(1, count.max(1));
    if threads == 1 {
        return for_chunks_seq(out, chunk, count, 0, work);
    }
    // One slot per chunk: (output bytes, result). Each chunk is claimed once, so its mutex is
    // never contended; it only hands the `&mut` to whichever thread claimed it.
    let mut slots = Vec::with_capacity(count);
    let mut rest: &mut [u8] = out;
    for i in 0..count {
        let take = if i + 1 == count { rest.len() } else { chunk };
        let (a, r) = std::mem::take(&mut rest).split_at_mut(take);
        slots.push(Mutex::new((a, Ok(()))));
        rest = r;
    }
    let ran = catch_unwind(AssertUnwindSafe(|| {
        pool::run(count, threads, &|i| {
            let mut guard = slots[i].lock().unwrap_or_else(PoisonError::into_inner);
            let (ref mut bytes, ref mut result) = *guard;
            *result = work(i, bytes);
        });
    }));
    if ran.is_err() {
        return Err(Error::Crypto);
    }
    slots
        .into_iter()
        .try_for_each(|s| s.into_inner().unwrap_or_else(PoisonError::into_inner).1)
}

/// Seals a stream segment by segment; only ever moves forward.
pub struct Encryptor {
    key: LessSafeKey,
    prefix: [u8; PREFIX_LEN],
    segment_size: usize,
    header: Vec<u8>,
    next: u64,
    finished: bool,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("segment_size", &self.segment_size)
            .field("next_segment", &self.next)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Starts a stream under `dek` with a fresh random salt and nonce prefix.
    ///
    /// `key_ref` is the envelope v1 header that names `dek` (what an envelope sealer writes).
    /// One message of the DEK's budget is reserved: the segments themselves are sealed under
    /// the derived stream key, not under the DEK.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on a bad segment size, [`Error::Malformed`] on a bad key
    /// reference, [`Error::Authentication`] when `key_ref` does not belong to `dek` or the
    /// context, [`Error::KeyUsageExceeded`] when the DEK's budget is spent.
    pub fn new(
        dek: &DataKey,
        key_ref: &[u8],
        canonical_context: &[u8],
        aad: &[u8],
        segment_size: usize,
    ) -> Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        let mut prefix = [0u8; PREFIX_LEN];
        crate::core::osrand::fill(&mut salt)?;
        crate::core::osrand::fill(&mut prefix)?;
        Self::with_randomness(
            dek,
            key_ref,
            canonical_context,
            aad,
            segment_size,
            salt,
            prefix,
        )
    }

    /// As [`Encryptor::new`] with a given salt and prefix. Only for known-answer vectors:
    /// reusing a salt and prefix under one DEK reuses nonces.
    ///
    /// # Errors
    /// As [`Encryptor::new`].
    pub fn with_randomness(
        dek: &DataKey,
        key_ref: &[u8],
        canonical_context: &[u8],
        aad: &[u8],
        segment_size: usize,
        salt: [u8; SALT_LEN],
        prefix: [u8; PREFIX_LEN],
    ) -> Result<Self> {
        check_segment_size(segment_size)?;
        context::validate(canonical_context)?;
        check_key_ref(key_ref).map_err(|_| Error::InvalidArgument("bad key reference"))?;
        let padded = key_ref_envelope(key_ref);
        envelope::check_bindings(&envelope::parse(&padded)?, dek, canonical_context)
            .map_err(|_| Error::InvalidArgument("key reference does not match key or context"))?;
        dek.reserve_batch(1, 0)?;
        let mut header = Vec::with_capacity(FIXED_LEN + key_ref.len() + 71);
        header.extend_from_slice(&[MAGIC, VERSION_1, ALG_AES_256_GCM_HKDF, 0]);
        header.extend_from_slice(&(segment_size as u32).to_be_bytes());
        header.extend_from_slice(&(key_ref.len() as u16).to_be_bytes());
        header.extend_from_slice(key_ref);
        header.extend_from_slice(&salt);
        header.extend_from_slice(&prefix);
        let (key, tag) = derive(dek, &header, &salt, canonical_context, aad)?;
        header.extend_from_slice(&tag[..]);
        Ok(Encryptor {
            key,
            prefix,
            segment_size,
            header,
            next: 0,
            finished: false,
        })
    }

    /// The header, to be written before the first segment.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Segments sealed so far.
    pub fn segments_sealed(&self) -> u64 {
        self.next
    }

    /// True once the final segment is sealed.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Sealed length of a run of `plaintext_len` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a run that is not the last holds a partial segment.
    pub fn sealed_len(&self, plaintext_len: usize, last: bool) -> Result<usize> {
        let n = plan(plaintext_len, self.segment_size, last)?;
        plaintext_len
            .checked_add(n * TAG_LEN)
            .ok_or(Error::PayloadTooLarge)
    }

    /// Seals the next segments of the stream from `plaintext` into `out`.
    ///
    /// Unless `last`, `plaintext` must hold whole segments; with `last` the final segment takes
    /// the remainder (an empty `plaintext` gives one empty final segment). `threads` > 1 seals
    /// blocks of segments in parallel.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on wrong lengths or after the final segment,
    /// [`Error::PayloadTooLarge`] past 2^32 segments.
    pub fn seal_run(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
        last: bool,
        threads: usize,
    ) -> Result<()> {
        if self.finished {
            return Err(Error::InvalidArgument("the stream is already finished"));
        }
        if out.len() != self.sealed_len(plaintext.len(), last)? {
            return Err(Error::InvalidArgument("output buffer has the wrong length"));
        }
        let count = plan(plaintext.len(), self.segment_size, last)?;
        let first = self.next;
        if first + count as u64 > MAX_SEGMENTS {
            return Err(Error::PayloadTooLarge);
        }
        let (key, prefix, seg) = (&self.key, &self.prefix, self.segment_size);
        let work = |i: usize, sealed: &mut [u8]| -> Result<()> {
            let start = i * seg;
            let pt_len = sealed.len() - TAG_LEN;
            let (ct, tag_out) = sealed.split_at_mut(pt_len);
            // Out of place: the ciphertext goes straight into the caller's buffer.
            key.seal_out_of_place_scatter(
                nonce(prefix, first + i as u64, last && i + 1 == count)?,
                Aad::empty(),
                &plaintext[start..start + pt_len],
                ct,
                &[],
                tag_out,
            )?;
            Ok(())
        };
        for_chunks(out, seg + TAG_LEN, count, threads, &work)?;
        self.next = first + count as u64;
        self.finished = last;
        Ok(())
    }
}

/// Opens the segments of a stream; stateless, so any segment opens on its own.
pub struct Decryptor {
    key: LessSafeKey,
    prefix: [u8; PREFIX_LEN],
    segment_size: usize,
    header_len: usize,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("segment_size", &self.segment_size)
            .field("header_len", &self.header_len)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// Checks the header tag of `header` under `dek`, the context and the associated data.
    ///
    /// # Errors
    /// As [`parse_header`]; [`Error::Authentication`] when the tag does not verify (a changed
    /// header byte, another DEK, context or associated data).
    pub fn new(dek: &DataKey, header: &[u8], canonical_context: &[u8], aad: &[u8]) -> Result<Self> {
        let h = parse_header(header)?;
        let padded = key_ref_envelope(h.key_ref);
        envelope::check_bindings(&envelope::parse(&padded)?, dek, canonical_context)?;
        let without_tag = &h.bytes[..h.bytes.len() - HEADER_TAG_LEN];
        let (key, tag) = derive(dek, without_tag, h.salt, canonical_context, aad)?;
        if !bool::from(tag[..].ct_eq(h.tag)) {
            return Err(Error::Authentication);
        }
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(h.prefix);
        Ok(Decryptor {
            key,
            prefix,
            segment_size: h.segment_size,
            header_len: h.bytes.len(),
        })
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Header length; segment `i` starts at `header_len + i * (segment_size + 16)`.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Plaintext length of a sealed run, or [`Error::Authentication`] if no run has that length.
    ///
    /// # Errors
    /// [`Error::Authentication`] on an impossible length (a cut inside a segment).
    pub fn opened_len(&self, sealed_len: usize, last: bool) -> Result<usize> {
        let sealed_seg = self.segment_size + TAG_LEN;
        let count = sealed_len.div_ceil(sealed_seg);
        if last {
            let tail = sealed_len - count.saturating_sub(1) * sealed_seg;
            if count == 0 || tail < TAG_LEN {
                return Err(Error::Authentication);
            }
        } else if sealed_len % sealed_seg != 0 {
            return Err(Error::Authentication);
        }
        Ok(sealed_len - count * TAG_LEN)
    }

    /// Opens the run of segments starting at segment `first` from `sealed` into `out`.
    ///
    /// With `last`, the run's final segment must be the stream's final segment. On any
    /// failure `out` is zeroized, so no unauthenticated plaintext is left in it.
    ///
    /// # Errors
    /// [`Error::Authentication`] on a tag failure or an impossible length,
    /// [`Error::InvalidArgument`] when `out` has the wrong length.
    pub fn open_run(
        &self,
        first: u64,
        sealed: &[u8],
        out: &mut [u8],
        last: bool,
        threads: usize,
    ) -> Result<()> {
        let pt_len = self.opened_len(sealed.len(), last)?;
        if out.len() != pt_len {
            return Err(Error::InvalidArgument("output buffer has the wrong length"));
        }
        let seg = self.segment_size;
        let count = sealed.len().div_ceil(seg + TAG_LEN).max(usize::from(last));
        if first.saturating_add(count as u64) > MAX_SEGMENTS {
            return Err(Error::Authentication);
        }
        let (key, prefix) = (&self.key, &self.prefix);
        let work = |i: usize, plain: &mut [u8]| -> Result<()> {
            let start = i * (seg + TAG_LEN);
            let ct = &sealed[start..start + plain.len()];
            let tag = &sealed[start + plain.len()..start + plain.len() + TAG_LEN];
            key.open_separate_gather(
                nonce(prefix, first + i as u64, last && i + 1 == count)?,
                Aad::empty(),
                ct,
                tag,
                plain,
            )
            .map_err(|_| Error::Authentication)
        };
        let result = for_chunks(out, seg, count, threads, &work);
        if result.is_err() {
            zeroize::Zeroize::zeroize(out);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::aead::UsageLimits;
    use crate::core::envelope::{HeaderSpec, KeyRef};

    const SEG: usize = MIN_SEGMENT;

    fn setup() -> (DataKey, Vec<u8>) {
        let dek = DataKey::generate(UsageLimits::default()).unwrap();
        let spec = HeaderSpec {
            version: crate::core::envelope::VERSION_1,
            key_version: 1,
            key_ref: KeyRef::Stored { dek_id: 7 },
            context_digest: false,
            commitment: false,
        };
        let canonical = canonical_ctx();
        let key_ref = envelope::encode_header(&spec, &dek, &canonical).unwrap();
        (dek, key_ref)
    }

    fn canonical_ctx() -> Vec<u8> {
        context::encode([("data_class", "pii"), ("tenant_id", "acme")]).unwrap()
    }

    fn encrypt(dek: &DataKey, key_ref: &[u8], aad: &[u8], pt: &[u8], threads: usize) -> Vec<u8> {
        let mut enc = Encryptor::new(dek, key_ref, &canonical_ctx(), aad, SEG).unwrap();
        let mut out = enc.header().to_vec();
        let mut body = vec![0u8; enc.sealed_len(pt.len(), true).unwrap()];
        enc.seal_run(pt, &mut body, true, threads).unwrap();
        out.extend_from_slice(&body);
        assert_eq!(
            out.len() as u64,
            stream_len(enc.header().len(), SEG, pt.len() as u64).unwrap()
        );
        out
    }

    fn decrypt(dek: &DataKey, stream: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let hlen = header_len(stream)?;
        let d = Decryptor::new(
            dek,
            stream.get(..hlen).ok_or(Error::Authentication)?,
            &canonical_ctx(),
            aad,
        )?;
        let body = &stream[hlen..];
        let mut out = vec![0u8; d.opened_len(body.len(), true)?];
        d.open_run(0, body, &mut out, true, 1)?;
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_segment_edges_and_with_threads() {
        let (dek, kr) = setup();
        for n in [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5] {
            for threads in [1, 2, 3] {
                let pt = data(n);
                let s = encrypt(&dek, &kr, b"ad", &pt, threads);
                assert_eq!(decrypt(&dek, &s, b"ad").unwrap(), pt, "n={n}");
                let (len, _) = plaintext_len(header_len(&s).unwrap(), SEG, s.len() as u64).unwrap();
                assert_eq!(len, n as u64);
            }
        }
    }

    #[test]
    fn incremental_runs_match_parallel_opening() {
        let (dek, kr) = setup();
        let mut enc = Encryptor::new(&dek, &kr, &canonical_ctx(), b"", SEG).unwrap();
        let pt = data(5 * SEG + 3);
        let mut s = enc.header().to_vec();
        for (chunk, last) in [
            (&pt[..2 * SEG], false),
            (&pt[2 * SEG..4 * SEG], false),
            (&pt[4 * SEG..], true),
        ] {
            let mut out = vec![0u8; enc.sealed_len(chunk.len(), last).unwrap()];
            enc.seal_run(chunk, &mut out, last, 2).unwrap();
            s.extend_from_slice(&out);
        }
        assert!(enc.finished());
        let mut again = vec![0u8; 16];
        assert!(enc.seal_run(&[], &mut again, true, 1).is_err());
        let hlen = header_len(&s).unwrap();
        let d = Decryptor::new(&dek, &s[..hlen], &canonical_ctx(), b"").unwrap();
        let mut out = vec![0u8; pt.len()];
        d.open_run(0, &s[hlen..], &mut out, true, 2).unwrap();
        assert_eq!(out, pt);
        // Random access: segment 3 alone.
        let at = hlen + 3 * (SEG + TAG_LEN);
        let mut one = vec![0u8; SEG];
        d.open_run(3, &s[at..at + SEG + TAG_LEN], &mut one, false, 1)
            .unwrap();
        assert_eq!(one, &pt[3 * SEG..4 * SEG]);
        // The same segment claimed at another index fails.
        assert_eq!(
            d.open_run(2, &s[at..at + SEG + TAG_LEN], &mut one, false, 1),
            Err(Error::Authentication)
        );
        assert!(one.iter().all(|b| *b == 0));
    }

    #[test]
    fn every_header_bit_flip_fails() {
        let (dek, kr) = setup();
        let s = encrypt(&dek, &kr, b"", &data(10), 1);
        let hlen = header_len(&s).unwrap();
        for bit in 0..hlen * 8 {
            let mut t = s.clone();
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(decrypt(&dek, &t, b"").is_err(), "bit {bit}");
        }
    }

    #[test]
    fn segment_bit_flips_fail() {
        let (dek, kr) = setup();
        let s = encrypt(&dek, &kr, b"", &data(2 * SEG + 9), 1);
        let hlen = header_len(&s).unwrap();
        for pos in (hlen..s.len())
            .step_by(4099)
            .chain([s.len() - 1, hlen + SEG + 15])
        {
            let mut t = s.clone();
            t[pos] ^= 0x40;
            assert_eq!(
                decrypt(&dek, &t, b""),
                Err(Error::Authentication),
                "pos {pos}"
            );
        }
    }

    #[test]
    fn truncation_reordering_and_extension_fail() {
        let (dek, kr) = setup();
        let pt = data(3 * SEG + 100);
        let s = encrypt(&dek, &kr, b"", &pt, 1);
        let hlen = header_len(&s).unwrap();
        let ss = SEG + TAG_LEN;
        // Truncation at every segment boundary and inside segments and the header.
        for cut in (0..4).map(|i| hlen + i * ss).chain([
            1,
            9,
            hlen - 1,
            hlen + 5,
            hlen + ss + 16,
            s.len() - 1,
        ]) {
            assert!(decrypt(&dek, &s[..cut], b"").is_err(), "cut {cut}");
        }
        // Swapping segments 0 and 1.
        let mut t = s.clone();
        let (a, b) = (
            s[hlen..hlen + ss].to_vec(),
            s[hlen + ss..hlen + 2 * ss].to_vec(),
        );
        t[hlen..hlen + ss].copy_from_slice(&b);
        t[hlen + ss..hlen + 2 * ss].copy_from_slice(&a);
        assert_eq!(decrypt(&dek, &t, b""), Err(Error::Authentication));
        // Duplicating segment 0.
        let mut t = s[..hlen + ss].to_vec();
        t.extend_from_slice(&s[hlen..]);
        assert_eq!(decrypt(&dek, &t, b""), Err(Error::Authentication));
        // Appending a segment of another stream under the same key.
        let other = encrypt(&dek, &kr, b"", &data(SEG + 1), 1);
        let mut t = s.clone();
        t.extend_from_slice(&other[hlen..hlen + ss]);
        assert_eq!(decrypt(&dek, &t, b""), Err(Error::Authentication));
        // Dropping the final segment leaves a non-final segment last.
        assert_eq!(
            decrypt(&dek, &s[..hlen + 3 * ss], b""),
            Err(Error::Authentication)
        );
        // Other associated data or context.
        assert_eq!(decrypt(&dek, &s, b"x"), Err(Error::Authentication));
        let other_ctx = context::encode([("data_class", "pii"), ("tenant_id", "other")]).unwrap();
        let d = Decryptor::new(&dek, &s[..hlen], &other_ctx, b"");
        assert!(d.is_err());
    }

    #[test]
    fn hostile_headers_never_panic() {
        let (dek, kr) = setup();
        let s = encrypt(&dek, &kr, b"", &data(3), 1);
        let mut seed = 0x1234_5678_u64;
        for len in 0..200 {
            for _ in 0..20 {
                let mut t: Vec<u8> = s[..len.min(s.len())].to_vec();
                for b in t.iter_mut().skip(10) {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    if seed >> 60 == 0 {
                        *b = (seed >> 32) as u8;
                    }
                }
                let _ = decrypt(&dek, &t, b"");
                let _ = parse_header(&t);
            }
        }
        let mut t = s.clone();
        t[8] = 0xff;
        t[9] = 0xff;
        assert!(matches!(header_len(&t), Err(Error::Malformed(_))));
        assert!(plaintext_len(100, SEG, 50).is_err());
        assert!(plaintext_len(100, SEG, 110).is_err());
    }

    #[test]
    fn arguments_are_checked() {
        let (dek, kr) = setup();
        assert!(Encryptor::new(&dek, &kr, &canonical_ctx(), b"", SEG - 1).is_err());
        assert!(Encryptor::new(&dek, &kr, &canonical_ctx(), b"", MAX_SEGMENT + 1).is_err());
        assert!(Encryptor::new(&dek, &kr[..kr.len() - 1], &canonical_ctx(), b"", SEG).is_err());
        let mut enc = Encryptor::new(&dek, &kr, &canonical_ctx(), b"", SEG).unwrap();
        let mut out = vec![0u8; SEG + 16];
        assert!(enc.seal_run(&data(SEG - 1), &mut out, false, 1).is_err());
        let other = DataKey::generate(UsageLimits::default()).unwrap();
        let inline = envelope::encode_header(
            &HeaderSpec {
                version: crate::core::envelope::VERSION_1,
                key_version: 1,
                key_ref: KeyRef::Inline {
                    provider: "local",
                    key_id: "k",
                    wrapped_dek: b"w",
                },
                context_digest: true,
                commitment: true,
            },
            &other,
            &canonical_ctx(),
        )
        .unwrap();
        // An inline reference that commits to another DEK is refused.
        assert!(Encryptor::new(&dek, &inline, &canonical_ctx(), b"", SEG).is_err());
        let limited = DataKey::generate(UsageLimits::new(1, 10).unwrap()).unwrap();
        let kr2 = envelope::encode_header(
            &HeaderSpec {
                version: crate::core::envelope::VERSION_1,
                key_version: 1,
                key_ref: KeyRef::Stored { dek_id: 1 },
                context_digest: false,
                commitment: false,
            },
            &limited,
            &canonical_ctx(),
        )
        .unwrap();
        assert!(Encryptor::new(&limited, &kr2, &canonical_ctx(), b"", SEG).is_ok());
        assert_eq!(
            Encryptor::new(&limited, &kr2, &canonical_ctx(), b"", SEG).err(),
            Some(Error::KeyUsageExceeded)
        );
    }
}
