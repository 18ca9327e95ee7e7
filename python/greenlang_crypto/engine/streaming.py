"""The streaming path: large objects in segments (the I/O lives in :mod:`greenlang_crypto.streams`).

One DEK per stream, from the same caches and provider as the envelope path; memory stays
constant whatever the size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlang_crypto import streams
from greenlang_crypto._core import (
    STREAM_DEFAULT_SEGMENT,
    STREAM_MAX_SEGMENT,
    STREAM_MIN_SEGMENT,
    DataKey,
    StreamDecryptor,
    StreamEncryptor,
    parse_stream_header,
)
from greenlang_crypto.exceptions import (
    GreenlangCryptoError,
    InvalidArgumentError,
    KeyStateError,
    KeyUsageExceededError,
    PayloadTooLargeError,
)

from ._common import ContextLike, as_context, check_aad, to_thread

if TYPE_CHECKING:
    from greenlang_crypto.context import EncryptionContext

    from .monitoring import Events
    from .runtime import Runtime

__all__ = ["Streaming"]

DataKeyLookup = Callable[[bytes, "EncryptionContext"], DataKey]


class Streaming:
    """Encrypts and decrypts streams, files and readers.

    Args:
        runtime: The caches, provider and keyring.
        events: Where failures and stream counts are pushed.
        data_key_for: Finds the DEK a stream's key envelope names (the envelope path's).
    """

    def __init__(self, runtime: Runtime, events: Events, data_key_for: DataKeyLookup) -> None:
        self._runtime = runtime
        self._events = events
        self._data_key_for = data_key_for

    def _encryptor(
        self, ctx: EncryptionContext, aad: bytes, segment_size: int, key_reference: str | None
    ) -> StreamEncryptor:
        runtime = self._runtime
        default = runtime.default_reference
        # A stream carries one DEK for all its segments, so a branch-derived key saves nothing:
        # a service whose envelopes use branch keys gives its streams a stored DEK.
        reference = key_reference or ("stored" if default == "branch" else default)
        if reference not in ("stored", "inline"):
            raise InvalidArgumentError("a stream's key_reference must be 'stored' or 'inline'")
        if not STREAM_MIN_SEGMENT <= segment_size <= STREAM_MAX_SEGMENT:
            raise InvalidArgumentError("segment_size must be in 65536..16777216")
        try:
            for _ in range(3):
                _cache, sealer = runtime.sealer(ctx, reference)
                try:
                    # The stream reserves one message of the cached DEK's budget.
                    return StreamEncryptor(
                        sealer.key, sealer.header, ctx.canonical, aad, segment_size=segment_size
                    )
                except KeyUsageExceededError:
                    fresh = runtime.new_sealer(runtime.primary, ctx, reference)
                    with runtime.flight(reference.encode() + b"|" + ctx.canonical):
                        runtime.enc_caches[reference].put(ctx.canonical, fresh, ctx.data_class)
            raise KeyStateError("could not obtain a data key with budget left")
        except GreenlangCryptoError as exc:
            self._events.failed("encryption_failed", "encrypt", exc, ctx)
            raise

    def _decryptor(self, header: bytes, ctx: EncryptionContext, aad: bytes) -> StreamDecryptor:
        try:
            key = self._data_key_for(parse_stream_header(header).key_envelope, ctx)
            return StreamDecryptor(key, header, ctx.canonical, aad)
        except GreenlangCryptoError as exc:
            self._events.failed("decryption_failed", "decrypt", exc, ctx)
            raise

    def encrypt_stream(
        self,
        src: Any,
        dst: Any,
        context: ContextLike,
        associated_data: bytes | None = b"",
        *,
        segment_size: int = STREAM_DEFAULT_SEGMENT,
        key_reference: str | None = None,
        threads: int = 1,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Encrypts ``src`` into ``dst`` as a stream (docs/FORMAT.md, "Stream format v1").

        Memory stays constant (a few segments) whatever the size. One DEK per stream, from
        the same cache and providers as :meth:`encrypt`; ``max_plaintext_bytes`` does not
        apply, ``stream_max_bytes`` does.

        Args:
            src: A binary file object (anything with ``readinto`` or ``read``) or an iterable
                of bytes chunks.
            dst: A binary file object (anything with ``write``).
            context: Tenant and data class; required again to decrypt.
            associated_data: A binding (for example an object's location), required again.
            segment_size: Plaintext bytes per segment, 64 KiB to 16 MiB.
            key_reference: ``stored`` or ``inline``; default from the configuration.
            threads: Threads sealing the segments of one run in parallel.
            progress: Called with the plaintext bytes of each run as it is written.

        Returns:
            The plaintext bytes encrypted.

        Raises:
            PayloadTooLargeError: The source passed ``stream_max_bytes`` (a regular file is
                refused before any KMS call; otherwise ``dst`` holds an incomplete stream,
                which never decrypts).
            InvalidArgumentError: A bad segment size, key reference or thread count.
            KmsError: The provider failed (typed by cause).
        """
        ctx = as_context(context)
        aad = check_aad(associated_data) or b""
        limit = self._runtime.config.stream_max_bytes
        known = streams.regular_file_size(src)
        if known is not None and known > limit:
            raise PayloadTooLargeError(f"input is {known} bytes, more than {limit}")
        enc = self._encryptor(ctx, aad, segment_size, key_reference)
        try:
            n = streams.encrypt_to(
                enc, src, dst, max_bytes=limit, threads=threads, progress=progress
            )
        except GreenlangCryptoError as exc:
            self._events.failed("encryption_failed", "encrypt", exc, ctx)
            raise
        self._events.count_stream("encrypt", ctx, n)
        return n

    def open_decrypting(
        self,
        src: Any,
        context: ContextLike,
        associated_data: bytes | None = b"",
        *,
        threads: int = 1,
        close_source: bool = False,
    ) -> streams.DecryptingReader:
        """Opens a stream for reading its plaintext: a read-only ``io.RawIOBase``.

        The header is read and verified here (the DEK comes from the cache or the provider).
        The reader is seekable when ``src`` is, and then any byte range opens only the
        segments that cover it. It never returns plaintext that did not authenticate.

        Raises:
            DecryptionError: The header does not verify under this context and binding, or
                is malformed (opaque).
            KeyVersionUnavailableError: The stream's key version is not in the keyring.
            KeyRetiredError: The key version is below the minimum decryption version.
        """
        ctx = as_context(context)
        aad = check_aad(associated_data) or b""
        events = self._events
        reader = streams.as_reader(src)
        seekable = bool(getattr(reader, "seekable", lambda: False)())
        start = reader.tell() if seekable else 0  # type: ignore[attr-defined]
        try:
            header = streams.read_header(reader)
        except GreenlangCryptoError as exc:
            events.failed("decryption_failed", "decrypt", exc, ctx)
            raise
        dec = self._decryptor(header, ctx, aad)
        return streams.DecryptingReader(
            reader,
            dec,
            start=start,
            on_close=lambda n: events.count_stream("decrypt", ctx, n),
            on_failure=lambda exc: events.failed("decryption_failed", "decrypt", exc, ctx),
            close_source=close_source,
            threads=threads,
        )

    def decrypt_stream(
        self,
        src: Any,
        dst: Any,
        context: ContextLike,
        associated_data: bytes | None = b"",
        *,
        start: int = 0,
        end: int | None = None,
        threads: int = 1,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Decrypts the plaintext bytes ``[start, end)`` of a stream into ``dst``.

        Returns:
            The plaintext bytes written.

        Raises:
            DecryptionError: As :meth:`open_decrypting`, or a segment fails (what was written
                before it authenticated; use :meth:`decrypt_file` for all-or-nothing).
        """
        with self.open_decrypting(src, context, associated_data, threads=threads) as reader:
            return streams.decrypt_to(reader, dst, start=start, end=end, progress=progress)

    def encrypt_file(
        self,
        /,
        src_path: str | os.PathLike[str],
        dst_path: str | os.PathLike[str],
        context: ContextLike,
        associated_data: bytes | None = b"",
        **kwargs: Any,
    ) -> int:
        """Encrypts a file into a stream file written atomically.

        The output is a temporary file (mode 0600) renamed into place only when complete.
        Keyword arguments as :meth:`encrypt_stream`.
        """
        with open(src_path, "rb", buffering=0) as src, streams.atomic_output(dst_path) as dst:
            return self.encrypt_stream(src, dst, context, associated_data, **kwargs)

    def decrypt_file(
        self,
        /,
        src_path: str | os.PathLike[str],
        dst_path: str | os.PathLike[str],
        context: ContextLike,
        associated_data: bytes | None = b"",
        **kwargs: Any,
    ) -> int:
        """Decrypts a stream file into a file written atomically (mode 0600).

        On any failure nothing is left at ``dst_path``. Keyword arguments as
        :meth:`decrypt_stream`.
        """
        with open(src_path, "rb", buffering=0) as src, streams.atomic_output(dst_path) as dst:
            return self.decrypt_stream(src, dst, context, associated_data, **kwargs)

    async def encrypt_stream_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`encrypt_stream` on a worker thread (the event loop never blocks)."""
        return await to_thread(self.encrypt_stream, *args, **kwargs)

    async def decrypt_stream_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`decrypt_stream` on a worker thread."""
        return await to_thread(self.decrypt_stream, *args, **kwargs)

    async def encrypt_file_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`encrypt_file` on a worker thread."""
        return await to_thread(self.encrypt_file, *args, **kwargs)

    async def decrypt_file_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`decrypt_file` on a worker thread."""
        return await to_thread(self.decrypt_file, *args, **kwargs)
