"""Client-side encryption for S3 objects (the ``s3`` extra: boto3 and s3transfer).

Objects are stored as streams (docs/FORMAT.md, "Stream format v1"): memory stays constant
whatever the object's size, uploads go through s3transfer (multipart for large objects), and a
ranged read fetches and opens only the segments that cover the range. The bucket and key are
bound into the associated data, so an object copied or renamed elsewhere fails to decrypt
unless it is re-encrypted; a changed byte fails too. Server-side encryption (SSE-KMS, from the
Terraform module) stays as it is: pass ``ServerSideEncryption`` and ``SSEKMSKeyId`` as usual.

Example::

    s3 = EncryptedS3Client(service, boto3.client("s3"))
    s3.upload_file("backup.tar", "my-bucket", "backups/2026-12-01.tar", context=ctx)
    part = s3.get_object(Bucket="my-bucket", Key="backups/2026-12-01.tar", context=ctx,
                         Range="bytes=734003200-735051775")["Body"].read()

Object metadata records the format (``glc-format: stream-v1``), the segment size, the key
version and key reference, and the plaintext length when it is known before the upload. It is
informational: the stream header carries what decryption needs and authenticates it.
"""

# The parameter names are boto3's (Bucket, Key, Body, Range, ExtraArgs...), so that a call
# moves from a boto3 client to this one by adding a context and nothing else.
# ruff: noqa: N803

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from greenlang_crypto import streams as _streams
from greenlang_crypto._core import (
    STREAM_DEFAULT_SEGMENT,
    parse_envelope,
    parse_stream_header,
    stream_plaintext_len,
)
from greenlang_crypto.exceptions import InvalidArgumentError

__all__ = ["FORMAT", "EncryptedS3Client", "object_binding"]

#: Value of the ``glc-format`` metadata entry of an encrypted object.
FORMAT = "stream-v1"
_LABEL = b"greenlang-crypto/s3/v1"
#: Bytes fetched by the first read of a ranged get: any usual header fits (stored references
#: take about 100 bytes, inline ones a few hundred); a longer one takes one more request.
_HEAD_FETCH = 4096
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def object_binding(bucket: str, key: str) -> bytes:
    """The associated data that binds an object to its bucket and key.

    ``label || 0x00 || bucket || 0x00 || key`` in UTF-8; a bucket name never contains NUL, so
    no two (bucket, key) pairs give the same bytes.
    """
    if not bucket or "\x00" in bucket:
        raise InvalidArgumentError("bucket must be a non-empty name without NUL")
    return _LABEL + b"\x00" + bucket.encode() + b"\x00" + key.encode()


def _metadata(header: bytes, segment_size: int, plaintext_len: int | None) -> dict[str, str]:
    ref = parse_envelope(parse_stream_header(header).key_envelope)
    if ref.kind == "stored":
        key_ref = f"stored:{ref.dek_id}"
    else:
        key_ref = f"inline:{ref.provider}:{ref.key_id}"
    meta = {
        "glc-format": FORMAT,
        "glc-segment-size": str(segment_size),
        "glc-key-version": str(ref.key_version),
        "glc-key-ref": key_ref,
    }
    if plaintext_len is not None:
        meta["glc-plaintext-length"] = str(plaintext_len)
    return meta


def _merge_metadata(user: Mapping[str, str] | None, ours: Mapping[str, str]) -> dict[str, str]:
    merged = dict(user or {})
    clash = [k for k in merged if k.lower().startswith("glc-")]
    if clash:
        raise InvalidArgumentError(f"metadata keys starting with glc- are reserved: {clash}")
    merged.update(ours)
    return merged


class _RangedObject(io.RawIOBase):
    """A seekable raw file over one S3 object: every read is one ranged GET of what it asks."""

    def __init__(self, client: Any, bucket: str, key: str, size: int, extra: dict[str, Any]):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._size = size
        self._extra = extra
        self._pos = 0
        self._head = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _get(self, first: int, last: int) -> bytes:
        resp = self._client.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={first}-{last}", **self._extra
        )
        with resp["Body"] as body:
            return bytes(body.read())

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        want = min(len(out), self._size - self._pos)
        if want <= 0:
            return 0
        if self._pos < _HEAD_FETCH:
            # The header is read in small pieces: fetch its neighbourhood once.
            if not self._head:
                self._head = self._get(0, min(_HEAD_FETCH, self._size) - 1)
            if self._pos + want <= len(self._head):
                out[:want] = self._head[self._pos : self._pos + want]
                self._pos += want
                return want
        data = self._get(self._pos, self._pos + want - 1)
        n = len(data)
        out[:n] = data
        self._pos += n
        return n


class _Limited(io.RawIOBase):
    """The first ``length`` bytes of a reader (the body of a ranged get)."""

    def __init__(self, reader: io.RawIOBase, length: int) -> None:
        super().__init__()
        self._reader = reader
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = min(len(out), self._left)
        if n <= 0:
            return 0
        got = self._reader.readinto(out[:n]) or 0
        self._left -= got
        return got

    def close(self) -> None:
        self._reader.close()
        super().close()


def _parse_range(spec: str, size: int) -> tuple[int, int]:
    """An HTTP byte range against a plaintext of ``size`` bytes: ``(start, end exclusive)``."""
    m = _RANGE.match(spec.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise InvalidArgumentError("Range must be 'bytes=START-END', 'bytes=START-' or 'bytes=-N'")
    if not m.group(1):  # a suffix: the last N bytes
        return max(0, size - int(m.group(2))), size
    start = int(m.group(1))
    end = size if not m.group(2) else min(size, int(m.group(2)) + 1)
    if start >= size or end <= start:
        raise InvalidArgumentError(f"Range {spec!r} is not satisfiable for {size} bytes")
    return start, end


class EncryptedS3Client:
    """S3 with client-side encryption through an :class:`EncryptionService`.

    Method and parameter names follow boto3 (``Bucket``, ``Key``, ``Body``, ``Range``,
    ``ExtraArgs``); each method also takes the encryption ``context``. Other keyword arguments
    go to boto3 unchanged (for example ``ServerSideEncryption="aws:kms"``).

    Args:
        service: The service that supplies keys (one DEK per object, from its cache).
        client: A boto3 S3 client (default: ``boto3.client("s3")``).
        segment_size: Plaintext bytes per segment (64 KiB to 16 MiB); a ranged read fetches
            whole segments.
        transfer_config: An ``s3transfer``/``boto3.s3.transfer.TransferConfig`` for uploads.
        key_reference: ``stored`` or ``inline``; default from the service's configuration.
    """

    def __init__(
        self,
        service: Any,
        client: Any = None,
        *,
        segment_size: int = STREAM_DEFAULT_SEGMENT,
        transfer_config: Any = None,
        key_reference: str | None = None,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3")
        self._service = service
        self._client = client
        self._segment_size = segment_size
        self._transfer_config = transfer_config
        self._key_reference = key_reference

    @property
    def client(self) -> Any:
        """The underlying boto3 client (for operations that need no encryption)."""
        return self._client

    def __repr__(self) -> str:
        return f"<EncryptedS3Client segment_size={self._segment_size}>"

    def _encrypting(
        self, src: Any, bucket: str, key: str, context: Any
    ) -> _streams.EncryptingReader:
        # The service encrypts (pushing into a file object) while s3transfer pulls: the
        # reader hands each run over from the service's thread without a copy.
        binding = object_binding(bucket, key)
        return _streams.EncryptingReader(
            lambda dst: self._service.encrypt_stream(
                src,
                dst,
                context,
                binding,
                segment_size=self._segment_size,
                key_reference=self._key_reference,
            )
        )

    # -- writes ----------------------------------------------------------------------------

    def put_object(
        self, *, Bucket: str, Key: str, Body: Any, context: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """Encrypts ``Body`` and stores it with one PutObject request.

        ``Body`` may be bytes, a binary file object or an iterable of bytes. The ciphertext is
        spooled (in memory up to 16 MiB, then in a temporary file) because one request needs
        its length first; use :meth:`upload_fileobj` for large objects.

        Returns:
            The PutObject response.
        """
        source: Any = Body
        known: int | None = None
        if isinstance(Body, bytes | bytearray | memoryview):
            known = len(Body)
            source = io.BytesIO(Body)
        else:
            known = _streams.regular_file_size(Body)
        reader = self._encrypting(source, Bucket, Key, context)
        meta = _metadata(reader.header, self._segment_size, known)
        metadata = _merge_metadata(kwargs.pop("Metadata", None), meta)
        with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spool:
            while chunk := reader.read(_streams.RUN_BYTES):
                spool.write(chunk)
            spool.seek(0)
            return self._client.put_object(  # type: ignore[no-any-return]
                Bucket=Bucket, Key=Key, Body=spool, Metadata=metadata, **kwargs
            )

    def upload_fileobj(
        self,
        Fileobj: Any,
        Bucket: str,
        Key: str,
        *,
        context: Any,
        ExtraArgs: Mapping[str, Any] | None = None,
        Callback: Callable[[int], object] | None = None,
        Config: Any = None,
    ) -> None:
        """Encrypts ``Fileobj`` while s3transfer uploads it (multipart above its threshold).

        Memory stays bounded by s3transfer's part size and concurrency; nothing is spooled.
        ``Callback`` receives ciphertext bytes transferred.
        """
        known = _streams.regular_file_size(Fileobj)
        reader = self._encrypting(Fileobj, Bucket, Key, context)
        extra = dict(ExtraArgs or {})
        extra["Metadata"] = _merge_metadata(
            extra.get("Metadata"), _metadata(reader.header, self._segment_size, known)
        )
        self._client.upload_fileobj(
            reader,
            Bucket,
            Key,
            ExtraArgs=extra,
            Callback=Callback,
            Config=Config if Config is not None else self._transfer_config,
        )

    def upload_file(
        self,
        Filename: str | os.PathLike[str],
        Bucket: str,
        Key: str,
        *,
        context: Any,
        ExtraArgs: Mapping[str, Any] | None = None,
        Callback: Callable[[int], object] | None = None,
        Config: Any = None,
    ) -> None:
        """Encrypts and uploads a file (see :meth:`upload_fileobj`)."""
        with open(Filename, "rb", buffering=0) as f:
            self.upload_fileobj(
                f,
                Bucket,
                Key,
                context=context,
                ExtraArgs=ExtraArgs,
                Callback=Callback,
                Config=Config,
            )

    # -- reads -----------------------------------------------------------------------------

    def get_object(
        self, *, Bucket: str, Key: str, context: Any, Range: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Gets an object and decrypts it as it is read.

        ``Body`` is a read-only file object of the plaintext, which never returns bytes that
        did not authenticate (a tampered, truncated, copied or renamed object raises the
        opaque ``DecryptionError``, at the latest when its end is read). With ``Range``
        (``bytes=START-END``, ``bytes=START-`` or ``bytes=-N``, over the plaintext), only the
        segments that cover the range are fetched and opened.

        Returns:
            The GetObject response with ``Body``, ``ContentLength`` (and with a range,
            ``ContentRange``) describing the plaintext.

        Raises:
            DecryptionError: The header does not verify (another bucket or key, context, or a
                changed byte), a ranged read finds the object cut or extended (its length is
                authenticated before any is reported), or a segment fails while reading.
            InvalidArgumentError: A malformed or unsatisfiable ``Range``.
        """
        binding = object_binding(Bucket, Key)
        if Range is None:
            resp = dict(self._client.get_object(Bucket=Bucket, Key=Key, **kwargs))
            body = resp["Body"]
            try:
                reader = self._service.open_decrypting(body, context, binding, close_source=True)
            except BaseException:
                body.close()
                raise
            resp["Body"] = reader
            sealed = resp.get("ContentLength")
            if sealed is not None:
                try:
                    resp["ContentLength"] = stream_plaintext_len(
                        reader.header_len, reader.segment_size, sealed
                    )[0]
                except BaseException:
                    reader.close()
                    raise
            return resp
        head = dict(self._client.head_object(Bucket=Bucket, Key=Key, **kwargs))
        # Every ranged GET asks for the version the HEAD saw: an object replaced between two
        # requests answers 412 instead of mixing the segments of two uploads.
        extra = dict(kwargs)
        if head.get("ETag") and "IfMatch" not in extra:
            extra["IfMatch"] = head["ETag"]
        source = _RangedObject(self._client, Bucket, Key, int(head["ContentLength"]), extra)
        reader = self._service.open_decrypting(source, context, binding, close_source=True)
        try:
            # The object's length is proven (its final segment opened) before it is reported
            # in ContentRange or used to check the range: a truncated object is refused here.
            size = reader.verify_size()
            start, end = _parse_range(Range, size)
        except BaseException:
            reader.close()
            raise
        reader.seek(start)
        head.update(
            Body=_Limited(reader, end - start),
            ContentLength=end - start,
            ContentRange=f"bytes {start}-{end - 1}/{size}",
        )
        return head

    def download_fileobj(self, Bucket: str, Key: str, Fileobj: Any, *, context: Any) -> int:
        """Decrypts an object into a binary file object; returns the plaintext bytes written.

        What was written before a failing segment authenticated; use :meth:`download_file`
        for all-or-nothing.
        """
        resp = self._client.get_object(Bucket=Bucket, Key=Key)
        with resp["Body"] as body:
            return self._service.decrypt_stream(  # type: ignore[no-any-return]
                body, Fileobj, context, object_binding(Bucket, Key)
            )

    def download_file(
        self, Bucket: str, Key: str, Filename: str | os.PathLike[str], *, context: Any
    ) -> int:
        """Decrypts an object into a file written atomically (mode 0600).

        On any failure nothing is left at ``Filename``, and until the whole object has
        authenticated the plaintext has no name at all (an anonymous file, linked in when
        complete; see :func:`greenlang_crypto._files.atomic_output`), so a process killed
        mid-download leaves nothing. A device or FIFO as ``Filename`` is written in place.
        Returns the plaintext bytes written.
        """
        with _streams.atomic_output(Filename) as dst:
            return self.download_fileobj(Bucket, Key, dst, context=context)
