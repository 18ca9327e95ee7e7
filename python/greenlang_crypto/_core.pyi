"""Type stubs for the Rust extension module ``greenlang_crypto._core``."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NoReturn, final

from typing_extensions import Buffer

__all__ = [
    "AESGCM",
    "ALG_AES_256_GCM",
    "BRANCH_SALT_LEN",
    "DETACH_THRESHOLD",
    "ENVELOPE_MAGIC",
    "FORMAT_VERSION",
    "GCM_MAX_PLAINTEXT",
    "KIND_BRANCH",
    "KIND_INLINE",
    "KIND_STORED",
    "MAX_KEY_ID_LEN",
    "MAX_MESSAGES_CAP",
    "MAX_PROVIDER_LEN",
    "MAX_WRAPPED_LEN",
    "OVERHEAD",
    "STREAM_DEFAULT_SEGMENT",
    "STREAM_FIXED_LEN",
    "STREAM_FORMAT_VERSION",
    "STREAM_MAGIC",
    "STREAM_MAX_SEGMENT",
    "STREAM_MIN_SEGMENT",
    "BlindIndexKey",
    "CacheSlot",
    "CachedOpener",
    "CachedSealer",
    "DataKey",
    "DekCache",
    "EnvelopeHeader",
    "EnvelopeSealer",
    "ManualClock",
    "StreamDecryptor",
    "StreamEncryptor",
    "StreamHeader",
    "branch_data_key",
    "branch_sealer",
    "branch_stats",
    "canonical_context",
    "constant_time_eq",
    "context_digest",
    "core_stats",
    "dek_cache_id",
    "export_key_bytes",
    "hazmat_stream_encryptor",
    "inline_key_ref_id",
    "live_data_keys",
    "monotonic_ns",
    "open_envelope",
    "parse_envelope",
    "parse_stream_header",
    "random_bytes",
    "stored_key_ref_id",
    "stream_header_len",
    "stream_len",
    "stream_plaintext_len",
    "wipe_buffer",
]

#: The envelope format version written by default (2: key-committing).
FORMAT_VERSION: Final[int]
MAX_MESSAGES_CAP: Final[int]
GCM_MAX_PLAINTEXT: Final[int]
DETACH_THRESHOLD: Final[int]
OVERHEAD: Final[int]
#: First byte of every envelope (0xFA).
ENVELOPE_MAGIC: Final[int]
#: Algorithm id of AES-256-GCM in the envelope header.
ALG_AES_256_GCM: Final[int]
#: Key reference kind byte: the wrapped DEK travels in the envelope.
KIND_INLINE: Final[int]
#: Key reference kind byte: a DEK id pointing into the key store.
KIND_STORED: Final[int]
#: Key reference kind byte: a branch key id and salt; the DEK is derived from the branch key.
KIND_BRANCH: Final[int]
#: Length of the random salt in a branch key reference.
BRANCH_SALT_LEN: Final[int]
#: Longest provider name an inline envelope may carry.
MAX_PROVIDER_LEN: Final[int]
#: Longest wrapping key id an inline envelope may carry.
MAX_KEY_ID_LEN: Final[int]
#: Longest wrapped DEK an inline envelope may carry.
MAX_WRAPPED_LEN: Final[int]

_AssociatedData = Buffer | None

@final
class DataKey:
    """An AES-256-GCM data key held in Rust; zeroized on drop, never pickled."""

    @staticmethod
    def generate(*, max_messages: int | None = None, max_bytes: int | None = None) -> DataKey: ...
    @staticmethod
    def from_bytes(
        key: Buffer, *, max_messages: int | None = None, max_bytes: int | None = None
    ) -> DataKey: ...
    def seal(self, plaintext: Buffer, associated_data: _AssociatedData = None) -> bytes: ...
    def open(self, ciphertext: Buffer, associated_data: _AssociatedData = None) -> bytes: ...
    def seal_batch(
        self, plaintexts: Sequence[Buffer], associated_data: _AssociatedData = None
    ) -> list[bytes]: ...
    def open_batch(
        self, ciphertexts: Sequence[Buffer], associated_data: _AssociatedData = None
    ) -> list[bytes]: ...
    def wrap_key(self, dek: DataKey, associated_data: _AssociatedData = None) -> bytes: ...
    def unwrap_key(
        self,
        wrapped: Buffer,
        associated_data: _AssociatedData = None,
        *,
        max_messages: int | None = None,
        max_bytes: int | None = None,
    ) -> DataKey: ...
    def derive_index_key(self, purpose: Buffer) -> BlindIndexKey: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def messages_used(self) -> int: ...
    @property
    def bytes_used(self) -> int: ...
    @property
    def max_messages(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def age_seconds(self) -> float: ...
    @property
    def exhausted(self) -> bool: ...
    def __reduce__(self) -> NoReturn: ...
    def __copy__(self) -> NoReturn: ...
    def __deepcopy__(self, memo: Any) -> NoReturn: ...

@final
class BlindIndexKey:
    """An HMAC-SHA256 key for one blind-index purpose."""

    def compute(self, value: Buffer, length: int = 32) -> bytes: ...
    def compute_batch(self, values: list[bytes], length: int, prefix: int) -> list[bytes]: ...
    def verify(self, value: Buffer, index: Buffer) -> bool: ...
    def __reduce__(self) -> NoReturn: ...

@final
class EnvelopeHeader:
    """The public header of an envelope."""

    @property
    def version(self) -> int: ...
    @property
    def algorithm(self) -> int: ...
    @property
    def key_version(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def key_id(self) -> str | None: ...
    @property
    def wrapped_dek(self) -> bytes | None: ...
    @property
    def dek_id(self) -> int | None: ...
    @property
    def branch_id(self) -> int | None:
        """Key-store branch key id (branch references only)."""

    @property
    def context_digest(self) -> bytes | None: ...
    @property
    def has_commitment(self) -> bool: ...
    @property
    def header_len(self) -> int: ...
    @property
    def plaintext_len(self) -> int: ...
    @property
    def key_ref_id(self) -> bytes: ...

@final
class EnvelopeSealer:
    """A data key bound to one header and one context."""

    def __new__(
        cls,
        key: DataKey,
        *,
        key_version: int,
        context: Buffer,
        dek_id: int | None = None,
        provider: str | None = None,
        key_id: str | None = None,
        wrapped_dek: Buffer | None = None,
        context_digest: bool = False,
        commitment: bool = False,
        format_version: int = 2,
    ) -> EnvelopeSealer: ...
    def seal(self, plaintext: Buffer, associated_data: _AssociatedData = None) -> bytes: ...
    def seal_batch(
        self,
        plaintexts: Sequence[Buffer],
        associated_data: _AssociatedData | Sequence[Buffer | None] = None,
    ) -> list[bytes]: ...
    @property
    def header(self) -> bytes: ...
    @property
    def key(self) -> DataKey: ...
    def __reduce__(self) -> NoReturn: ...

@final
class DekCache:
    """Bounded LRU cache of data keys with a TTL and per-key usage limits."""

    def __new__(
        cls,
        max_entries: int = 1000,
        ttl_seconds: float = 300.0,
        *,
        clock: ManualClock | None = None,
    ) -> DekCache:
        """A cache reading TTLs and its fence on ``clock`` (the system clock when None)."""
    def now_ns(self) -> int:
        """The cache's clock reading in nanoseconds (the clock its TTL and fence use)."""
    @property
    def min_key_version(self) -> int:
        """The lowest key version :meth:`open` serves from the cache (0: no limit)."""
    @property
    def require_commitment(self) -> bool:
        """Whether :meth:`open` refuses envelopes without a key commitment (as a miss)."""
    def set_require_commitment(self) -> None:
        """Makes :meth:`open` refuse envelopes without a key commitment (for good)."""
    def raise_min_key_version(self, version: int) -> int:
        """Raises :attr:`min_key_version` (never lowers it); returns the new value."""
    def get(self, id: Buffer) -> DataKey | EnvelopeSealer | None: ...
    def get_with_age(self, id: Buffer) -> tuple[DataKey | EnvelopeSealer, float] | None: ...
    def put(self, id: Buffer, item: DataKey | EnvelopeSealer, label: str | None = None) -> None: ...
    def counts(self) -> dict[str, tuple[int, int]]: ...
    def latency(self) -> tuple[list[float], list[int], float, int, int]: ...
    def seal(
        self,
        id: Buffer,
        plaintext: Buffer,
        associated_data: _AssociatedData = None,
        max_age: float | None = None,
    ) -> bytes | None: ...
    def open(
        self, envelope: Buffer, context: Buffer, associated_data: _AssociatedData = None
    ) -> bytes | None: ...
    def remove(self, id: Buffer) -> bool: ...
    def remove_prefix(self, prefix: Buffer) -> int: ...
    def purge_expired(self) -> int:
        """Drops entries past their TTL or out of budget; returns how many were dropped."""
    def clear(self) -> None: ...
    def set_fence(self, deadline_ns: int | None = None) -> None:
        """Seals through this cache miss from ``deadline_ns`` (of :meth:`now_ns`) on."""
    @property
    def fence_deadline(self) -> int | None:
        """The fence deadline in nanoseconds of the cache's clock, or None."""
    def __len__(self) -> int: ...
    @property
    def ttl_seconds(self) -> float: ...
    @property
    def max_entries(self) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def usage(self) -> dict[str, float]: ...
    def __reduce__(self) -> NoReturn: ...

@final
class ManualClock:
    """A monotonic clock that stands still until advanced (tests step past TTLs with it)."""

    def __new__(cls, start_ns: int = 0) -> ManualClock: ...
    def now_ns(self) -> int:
        """The current reading in nanoseconds."""
    def advance(self, seconds: float) -> None:
        """Moves the clock forward by ``seconds`` (finite, not negative)."""
    def set_ns(self, ns: int) -> None:
        """Sets the reading to ``ns`` nanoseconds, in either direction."""
    def __reduce__(self) -> NoReturn: ...

@final
class CachedOpener:
    """Per-column decryptor: cached DEK in one Rust call, else ``fallback(value)``."""

    def __new__(
        cls,
        cache: DekCache,
        context: Buffer,
        associated_data: Buffer | None,
        fallback: Callable[[Any], Any],
        text: bool = False,
    ) -> CachedOpener: ...
    def __call__(self, value: Any) -> Any: ...
    def open(self, value: Any) -> Any:
        """The same as calling the opener (cheaper per call as a bound method)."""

@final
class CacheSlot:
    """Holds a service's current encryption cache for the sealers that seal through it."""

    def __new__(cls, cache: DekCache) -> CacheSlot: ...
    def get(self) -> DekCache:
        """The cache in the slot now."""
    def set(self, cache: DekCache) -> None:
        """Puts ``cache`` in the slot; the next seal through it uses ``cache``."""

@final
class CachedSealer:
    """Per-column encryptor: cached sealer in one Rust call, else ``fallback(value)``.

    The encryption cache is read from ``slot`` on every call (the service sets a new one there
    when its primary key version changes). ``None`` stays ``None``; a ``str`` (``text``) or
    ``bytes`` value up to ``max_plaintext`` bytes is sealed when its sealer is cached and
    younger than ``max_age`` seconds; anything else goes to ``fallback``.
    """

    def __new__(
        cls,
        slot: CacheSlot,
        context: Buffer,
        associated_data: Buffer | None,
        fallback: Callable[[Any], Any],
        *,
        text: bool = False,
        max_age: float | None = None,
        max_plaintext: int = ...,
    ) -> CachedSealer: ...
    def __call__(self, value: Any) -> Any: ...
    def seal(self, value: Any) -> Any:
        """The same as calling the sealer (cheaper per call as a bound method)."""

@final
class AESGCM:
    """Caller-nonce AES-256-GCM with ``cryptography``'s calling convention (hazmat)."""

    def __new__(cls, key: Buffer) -> AESGCM: ...
    def encrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None) -> bytes: ...
    def decrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None) -> bytes: ...
    def __reduce__(self) -> NoReturn: ...

def canonical_context(context: Mapping[str, str] | None = None) -> bytes: ...
def context_digest(canonical: Buffer) -> bytes: ...
def parse_envelope(envelope: Buffer) -> EnvelopeHeader: ...
def open_envelope(
    key: DataKey, envelope: Buffer, context: Buffer, associated_data: _AssociatedData = None
) -> bytes: ...
def stored_key_ref_id(dek_id: int) -> bytes: ...
def inline_key_ref_id(provider: str, key_id: str, wrapped_dek: Buffer) -> bytes: ...
def export_key_bytes(key: DataKey) -> bytes: ...
def constant_time_eq(a: Buffer, b: Buffer) -> bool: ...
def core_stats() -> dict[str, int]: ...
def live_data_keys() -> int:
    """Data keys (DEKs, master and index root keys) alive in this process, in any holder."""

def random_bytes(n: int) -> bytes: ...
def monotonic_ns() -> int:
    """The system monotonic clock of DEK caches and their fences, in nanoseconds."""

# -- Branch keys (DEKs derived from a branch key with HKDF-SHA256) -------------------------

def branch_sealer(
    branch_key: DataKey,
    *,
    branch_id: int,
    key_version: int,
    context: Buffer,
    max_messages: int | None = None,
    max_bytes: int | None = None,
    format_version: int = 2,
) -> EnvelopeSealer:
    """A sealer for ``context`` under a DEK freshly derived from ``branch_key`` (new salt).

    Its envelopes carry the branch key reference (``branch_id`` and the salt) and
    ``key_version``.
    """

def branch_data_key(
    branch_key: DataKey,
    envelope: Buffer,
    context: Buffer,
    *,
    max_messages: int | None = None,
    max_bytes: int | None = None,
) -> DataKey:
    """The DEK a branch envelope was sealed with, derived again from its branch key.

    Raises:
        InvalidArgumentError: The envelope has no branch key reference.
    """

def dek_cache_id(envelope: Buffer, context: Buffer) -> bytes:
    """The decryption-cache id of the DEK ``envelope`` refers to under ``context``.

    Equal to ``EnvelopeHeader.key_ref_id`` for stored and inline references; for branch
    references it also covers the context, because the derived DEK depends on it.
    """

def branch_stats() -> dict[str, int]:
    """Branch-key counters kept in Rust atomics: ``{"derivations": n}``."""

# -- Stream format v1 (segmented AEAD for large objects) ----------------------------------

STREAM_MAGIC: Final[int]
"""First byte of every stream (envelopes start with ``ENVELOPE_MAGIC`` instead)."""
STREAM_FORMAT_VERSION: Final[int]
"""The stream format version this module writes."""
STREAM_MIN_SEGMENT: Final[int]
"""Smallest segment size (64 KiB)."""
STREAM_MAX_SEGMENT: Final[int]
"""Largest segment size (16 MiB)."""
STREAM_DEFAULT_SEGMENT: Final[int]
"""Default segment size (1 MiB)."""
STREAM_FIXED_LEN: Final[int]
"""Bytes of a stream header before its key reference."""

@final
class StreamEncryptor:
    """Seals a stream segment by segment under one DEK (per-stream key from HKDF).

    Raises:
        ValueError: A segment size outside 64 KiB..16 MiB.
    """

    def __new__(
        cls,
        key: DataKey,
        key_ref: bytes,
        context: bytes,
        associated_data: bytes | None = None,
        *,
        segment_size: int = ...,
    ) -> StreamEncryptor: ...
    @property
    def header(self) -> bytes:
        """The stream header, written before the first segment."""
    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment."""
    @property
    def finished(self) -> bool:
        """Whether the final segment was sealed."""
    def sealed_len(self, plaintext_len: int, last: bool) -> int:
        """Bytes that sealing ``plaintext_len`` bytes as the next run produces."""
    def seal_into(self, plaintext: Buffer, out: Buffer, last: bool, threads: int = 1) -> int:
        """Seals the next run of whole segments into ``out``; returns the bytes written."""
    def seal(self, plaintext: Buffer, last: bool, threads: int = 1) -> bytes:
        """Seals the next run of whole segments into a new ``bytes``."""

@final
class StreamDecryptor:
    """Opens any segment of a stream whose header verified under the DEK and context.

    Raises:
        DecryptionError: The header does not verify (opaque).
    """

    def __new__(
        cls,
        key: DataKey,
        header: bytes,
        context: bytes,
        associated_data: bytes | None = None,
    ) -> StreamDecryptor: ...
    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment."""
    @property
    def header_len(self) -> int:
        """Length of the stream header."""
    def opened_len(self, sealed_len: int, last: bool) -> int:
        """Plaintext bytes in a run of ``sealed_len`` sealed bytes."""
    def open_into(
        self, first: int, sealed: Buffer, out: Buffer, last: bool, threads: int = 1
    ) -> int:
        """Opens the run of segments starting at segment ``first`` into ``out``."""
    def open(self, first: int, sealed: Buffer, last: bool, threads: int = 1) -> bytes:
        """Opens the run of segments starting at segment ``first`` into a new ``bytes``."""

@final
class StreamHeader:
    """The public fields of a stream header (parsed, not yet verified)."""

    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment."""
    @property
    def header_len(self) -> int:
        """Length of the header."""
    @property
    def key_envelope(self) -> bytes:
        """The key reference as an empty-bodied envelope, for key resolution."""

def wipe_buffer(buffer: bytearray | memoryview) -> None:
    """Overwrites a writable buffer with zeros (not elided by the compiler)."""

def stream_header_len(prefix: bytes) -> int:
    """Header length announced by the first bytes of a stream."""

def parse_stream_header(data: bytes) -> StreamHeader:
    """Parses the header at the start of ``data`` (without verifying it)."""

def stream_plaintext_len(header_len: int, segment_size: int, total_len: int) -> tuple[int, int]:
    """``(plaintext length, segment count)`` of a stream of ``total_len`` bytes."""

def stream_len(header_len: int, segment_size: int, plaintext_len: int) -> int:
    """Total length of a stream of ``plaintext_len`` bytes."""

def hazmat_stream_encryptor(
    key: DataKey,
    key_ref: bytes,
    context: bytes,
    associated_data: bytes,
    segment_size: int,
    salt: bytes,
    prefix: bytes,
) -> StreamEncryptor:
    """Known-answer vectors only: an encryptor with a fixed salt and nonce prefix."""
