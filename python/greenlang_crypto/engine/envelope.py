"""The envelope path: encrypt and decrypt one value, in every form the service offers.

Encryption validates and canonicalizes the context, then seals through the encryption cache
of the key-reference kind in one Rust call; a miss takes the runtime's single-flight path.
Decryption parses the public header, checks the key version against the keyring, and opens
with a cached DEK, or unwraps the DEK through the provider (KMS Decrypt) on a miss. Every
authentication failure is one opaque :class:`DecryptionError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from greenlang_crypto._core import (
    CachedOpener,
    CachedSealer,
    DataKey,
    DekCache,
    EnvelopeSealer,
    open_envelope,
    parse_envelope,
)
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    CommitmentPolicyError,
    DecryptionError,
    GreenlangCryptoError,
    InvalidArgumentError,
    InvalidEnvelopeError,
    KeyNotFoundError,
    KeyRetiredError,
    KeyStateError,
    KeyUsageExceededError,
    KeyVersionUnavailableError,
    KmsAccessDeniedError,
    PayloadTooLargeError,
)
from greenlang_crypto.providers.base import EnforcesKeyAllowList

from ._common import (
    MAX_DEK_ID,
    REFERENCES,
    ContextLike,
    as_bytes,
    as_context,
    check_aad,
    check_reference,
    to_thread,
)

if TYPE_CHECKING:
    from greenlang_crypto._core import EnvelopeHeader
    from greenlang_crypto.keys.store import DekRecord

    from .monitoring import Events
    from .runtime import Runtime

__all__ = ["Envelope"]


class Envelope:
    """Encrypts and decrypts single values (and batches of them) through the DEK caches.

    Args:
        runtime: The caches, provider and keyring.
        events: Where events and failures are pushed.
    """

    def __init__(self, runtime: Runtime, events: Events) -> None:
        self._runtime = runtime
        self._events = events
        self._emit = events.emit
        self._failed = events.failed
        self._per_op = events.per_op
        self._slow_counts = events.slow_counts
        self._max_plaintext = runtime.max_plaintext
        self._default_reference = runtime.default_reference
        self._refresh_after = runtime.refresh_after
        self._dec_cache = runtime.dec_cache
        self._enc_caches: Mapping[str, DekCache] = {}
        runtime.add_cache_follower(self)

    def follow_caches(self, caches: Mapping[str, DekCache], current: DekCache) -> None:
        """Takes the runtime's new encryption caches (read directly by :meth:`encrypt`)."""
        self._enc_caches = caches
        self._enc_cache = current

    # -- encryption ------------------------------------------------------------------------

    def _check_plaintext(self, plaintext: object) -> bytes:
        data = as_bytes(plaintext, "plaintext")
        if len(data) > self._max_plaintext:
            raise PayloadTooLargeError(
                f"plaintext of {len(data)} bytes exceeds the maximum of {self._max_plaintext}"
            )
        return data

    def encrypt(
        self,
        plaintext: bytes,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
        key_reference: str | None = None,
    ) -> bytes:
        """Encrypts ``plaintext`` under a DEK bound to ``context``.

        Args:
            plaintext: The data (bytes; bytearray and memoryview are copied first).
            context: Tenant and data class (plus extra pairs); required again to decrypt.
            associated_data: Optional binding to a location (table, column, row id).
            key_reference: ``stored``, ``inline`` or ``branch`` (a :class:`KeyReference` or
                its string); default from the configuration.

        Returns:
            A self-describing envelope.

        Raises:
            TypeError: ``plaintext`` is not bytes-like.
            PayloadTooLargeError: Above ``max_plaintext_bytes`` (before any KMS call).
            InvalidContextError: The context is invalid.
            KmsError: The provider failed (typed by cause).
        """
        # The hot path avoids helper calls: at 64 bytes, each Python call is a measurable share
        # of the whole operation (see benches/gate_service.py). The context's canonical bytes
        # are read from its field for the same reason.
        data = plaintext if type(plaintext) is bytes else self._check_plaintext(plaintext)
        if len(data) > self._max_plaintext:
            self._check_plaintext(data)
        ctx = context if type(context) is EncryptionContext else as_context(context)
        aad = associated_data if associated_data is None else check_aad(associated_data)
        if key_reference is None:
            reference = self._default_reference
            out = self._enc_cache.seal(ctx._canonical, data, aad, self._refresh_after)
        else:
            if key_reference not in REFERENCES:
                check_reference(key_reference)  # raises
            reference = key_reference
            out = self._enc_caches[reference].seal(ctx._canonical, data, aad, self._refresh_after)
        if out is None:
            out = self._encrypt_slow(ctx, reference, data, aad)
        if self._per_op:
            self._emit("encryption_performed", data_class=ctx.data_class, size=len(data))
        return out

    def _encrypt_slow(
        self, ctx: EncryptionContext, reference: str, data: bytes, aad: bytes | None
    ) -> bytes:
        try:
            for _ in range(3):
                cache, _sealer = self._runtime.sealer(ctx, reference)
                out = cache.seal(ctx.canonical, data, aad)
                if out is not None:
                    return out
                # A miss right after sealer(): the DEK's budget ran out, or the cache was
                # replaced or fenced meanwhile. Go round again (the fence is re-checked).
            # Three fresh keys in a row were spent by other threads; report, do not spin.
            raise KeyStateError("could not obtain a data key with budget left")
        except GreenlangCryptoError as exc:
            self._failed("encryption_failed", "encrypt", exc, ctx)
            raise

    def encrypt_str(self, /, plaintext: str, context: ContextLike, **kwargs: Any) -> bytes:
        """Encrypts the UTF-8 encoding of ``plaintext``.

        Raises:
            InvalidArgumentError: The string holds a lone surrogate (not encodable as UTF-8).
        """
        if not isinstance(plaintext, str):
            raise TypeError("plaintext must be str")
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError("plaintext is not valid Unicode (lone surrogate)") from None
        return self.encrypt(data, context, **kwargs)

    def encrypt_batch(
        self,
        plaintexts: Sequence[bytes],
        context: ContextLike,
        *,
        associated_data: Sequence[bytes | None] | None = None,
        key_reference: str | None = None,
    ) -> list[bytes]:
        """Encrypts many values under one context: one provider call at most, one Rust call."""
        values = [self._check_plaintext(p) for p in plaintexts]
        if not values:
            return []
        ctx = as_context(context)
        aads = list(associated_data) if associated_data is not None else None
        if aads is not None and len(aads) != len(values):
            raise InvalidArgumentError("associated_data must have one entry per plaintext")
        reference = check_reference(key_reference or self._default_reference)
        runtime = self._runtime
        if len(values) > runtime.limits.max_messages:
            raise KeyStateError("batch is larger than one data key's message budget")
        for _ in range(3):
            out = self._seal_batch_once(ctx, reference, values, aads)
            if out is not None:
                return out
        raise KeyStateError("the encryption caches kept changing during a batch; retry it")

    def _seal_batch_once(
        self,
        ctx: EncryptionContext,
        reference: str,
        values: list[bytes],
        aads: list[bytes | None] | None,
    ) -> list[bytes] | None:
        """One attempt at a batch; None when the caches were replaced while it sealed.

        A batch seals with a sealer it holds, not through the cache (which a key change
        fences shut), so it checks afterwards that the cache it drew the sealer from is still
        the current one. Caches are replaced when a key change is loaded (a tenant erasure
        among them) before this instance acknowledges it, so a batch that passes the check
        was sealed before the change reached this instance; one that fails is thrown away
        and sealed again under whatever the change allows.
        """
        runtime = self._runtime
        cache, sealer = runtime.sealer(ctx, reference)
        try:
            # seal_batch reserves the whole batch's budget in one atomic step (Rust), so a
            # concurrent writer can never take part of it between a check and the seals.
            out: list[bytes] = sealer.seal_batch(values, aads)
            return out if runtime.enc_caches[reference] is cache else None
        except KeyUsageExceededError:
            pass
        # The cached DEK has less budget left than the batch needs: the batch gets a fresh DEK
        # of its own and seals before any other writer can see that DEK, so its whole budget
        # is free. The DEK then replaces the cached one for later writers when it has more
        # budget left (another thread may have put a fresher one meanwhile).
        fresh = runtime.new_sealer(runtime.primary, ctx, reference)
        out = fresh.seal_batch(values, aads)
        if runtime.enc_caches[reference] is not cache:
            return None
        with runtime.flight(reference.encode() + b"|" + ctx.canonical):
            current = cache.get(ctx.canonical)
            left = fresh.key.max_messages - fresh.key.messages_used
            if not isinstance(current, EnvelopeSealer) or (
                current.key.max_messages - current.key.messages_used < left
            ):
                cache.put(ctx.canonical, fresh, ctx.data_class)
        return out

    async def encrypt_async(
        self, /, plaintext: bytes, context: ContextLike, **kwargs: Any
    ) -> bytes:
        """:meth:`encrypt` on a worker thread, so KMS calls never block the event loop."""
        return await to_thread(self.encrypt, plaintext, context, **kwargs)

    def value_encryptor(
        self,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
        text: bool = False,
        fallback: Callable[[Any], Any] | None = None,
    ) -> Callable[[Any], Any]:
        """A callable that encrypts one value under a fixed context and binding.

        The counterpart of :meth:`value_decryptor`, for database parameters: ``None`` stays
        ``None``; a ``str`` (``text``) or ``bytes`` value whose sealer is cached is sealed in a
        single Rust call, through the current encryption cache; anything else goes to
        ``fallback`` (default: :meth:`encrypt`, ``text`` values as UTF-8, with its errors and
        accounting).
        """
        ctx = as_context(context)
        aad = check_aad(associated_data)

        def encrypt_one(value: Any) -> Any:
            if value is None:
                return None
            if text:
                return self.encrypt_str(value, ctx, associated_data=aad)
            return self.encrypt(value, ctx, associated_data=aad)

        if fallback is None:
            fallback = encrypt_one
        slot = self._runtime.slot
        if self._per_op or slot is None:
            # Per-operation events are emitted by encrypt() itself.
            return fallback
        # The slot holds the default kind's current cache: the runtime sets the new one there
        # whenever it replaces the caches, and the sealer reads it on every call.
        sealer = CachedSealer(
            slot,
            ctx.canonical,
            aad,
            fallback,
            text=text,
            max_age=self._refresh_after,
            max_plaintext=self._max_plaintext,
        )
        # The bound method, as for value_decryptor: no argument tuple per value.
        return sealer.seal

    def reencrypt(
        self,
        ciphertext: bytes,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
    ) -> bytes:
        """Re-encrypts an envelope under the primary version; the plaintext never leaves."""
        plaintext = self.decrypt(ciphertext, context, associated_data=associated_data)
        return self.encrypt(plaintext, context, associated_data=associated_data)

    # -- decryption ------------------------------------------------------------------------

    def check_version(self, key_version: int) -> None:
        """Checks that ``key_version`` may decrypt here.

        Raises:
            KeyVersionUnavailableError: It is not in the keyring (after one refresh).
            KeyRetiredError: It is below the minimum decryption version.
        """
        runtime = self._runtime
        if key_version not in runtime.versions:
            # Another instance may have rotated before this one's next refresh: check the
            # change counter once (a single-row read) before reporting.
            runtime.keyring.refresh()
            if key_version not in runtime.versions:
                raise KeyVersionUnavailableError(key_version)
        if key_version < runtime.min_version:
            raise KeyRetiredError(key_version, runtime.min_version)

    def data_key_for_stream(self, key_envelope: bytes, ctx: EncryptionContext) -> DataKey:
        """The DEK a stream's key envelope names.

        The commitment policy does not apply: a stream's header tag is a PRF of its DEK, so
        every stream commits to its key whatever its embedded reference carries.
        """
        return self.data_key_for(key_envelope, ctx, committed=True)

    def data_key_for(
        self, envelope: bytes, ctx: EncryptionContext, *, committed: bool = False
    ) -> DataKey:
        """The DEK an envelope names, from the cache or the provider.

        ``committed`` says the caller checks a commitment of its own (streams), so the
        commitment policy is not applied to the envelope's header.

        Raises:
            CommitmentPolicyError: The envelope has no key commitment and the policy
                requires one.
            DecryptionError: The envelope names a key this service must not use.
            KeyNotFoundError: Its stored DEK is not in the key store.
            KeyVersionUnavailableError: Its key version is not in the keyring.
            KeyRetiredError: Its key version is retired.
            KmsError: The provider failed (typed by cause).
        """
        header = parse_envelope(envelope)
        if self._runtime.require_commitment and not committed and not header.has_commitment:
            raise CommitmentPolicyError()
        self.check_version(header.key_version)
        if header.kind == "branch":
            return self._branch_data_key(header, envelope, ctx)
        runtime = self._runtime
        ref_id = header.key_ref_id
        with runtime.flight(b"dec|" + ref_id):
            cached = self._dec_cache.get(ref_id)
            if isinstance(cached, DataKey):
                return cached
            if header.kind == "stored":
                key = self._unwrap_stored(header, ctx)
            else:
                key = self._unwrap_inline(header, ctx)
            runtime.cache_decryption_key(ref_id, key, header.key_version, ctx.data_class)
            self._emit(
                "key_cache_miss",
                operation="decrypt",
                data_class=ctx.data_class,
                key_version=header.key_version,
            )
            self._emit(
                "key_accessed",
                key_version=header.key_version,
                key_reference=header.kind,
                dek_id=header.dek_id,
                data_class=ctx.data_class,
                context_digest=ctx.digest.hex(),
                fingerprint=key.fingerprint,
            )
            return key

    def _unwrap_stored(self, header: EnvelopeHeader, ctx: EncryptionContext) -> DataKey:
        assert header.dek_id is not None
        if header.dek_id >= MAX_DEK_ID:
            # No stored DEK has such an id; the header is forged or corrupt.
            raise KeyNotFoundError()
        runtime = self._runtime
        cache = runtime.shared_cache
        if cache is not None:
            key = self._unwrap_shared_dek(header, ctx)
            if key is not None:
                return key
        record = runtime.store.get_dek(header.dek_id)
        key = self._unwrap_dek_record(record, header, ctx)
        if cache is not None and record is not None:
            from greenlang_crypto.redis_cache import dek_record_to_json

            epoch = runtime.keyring.snapshot.epoch
            cache.put(f"dek:{header.dek_id}", dek_record_to_json(record), epoch, key)
        return key

    def _unwrap_dek_record(
        self, record: DekRecord | None, header: EnvelopeHeader, ctx: EncryptionContext
    ) -> DataKey:
        if record is None:
            raise KeyNotFoundError()
        provider = self._runtime.provider
        if record.key_version != header.key_version or record.provider != provider.name:
            raise DecryptionError()
        return provider.decrypt_data_key(
            record.wrapping_key_id, record.wrapped, ctx, self._runtime.limits
        )

    def _unwrap_shared_dek(self, header: EnvelopeHeader, ctx: EncryptionContext) -> DataKey | None:
        """The DEK from the shared cache's record, once its entry authenticates; else None."""
        from greenlang_crypto.redis_cache import dek_record_from_json

        runtime = self._runtime
        cache = runtime.shared_cache
        assert cache is not None and header.dek_id is not None
        keyring = runtime.keyring
        entry = cache.get(
            f"dek:{header.dek_id}",
            keyring.snapshot.epoch,
            confirm_epoch=keyring.confirms_epoch,
        )
        if entry is None:
            return None
        record = dek_record_from_json(entry.record)
        if record is None or record.dek_id != header.dek_id:
            cache.reject()
            return None
        try:
            key = self._unwrap_dek_record(record, header, ctx)
        except GreenlangCryptoError:
            # The record the cache holds does not fit this envelope, or the provider refused
            # it (another context, a key id off the allow-list): the key store decides, not
            # Redis. A real provider outage fails again on the key store's record.
            cache.reject()
            return None
        if not entry.verify(key):
            cache.reject()
            return None
        return key

    def _unwrap_inline(self, header: EnvelopeHeader, ctx: EncryptionContext) -> DataKey:
        assert header.key_id is not None and header.wrapped_dek is not None
        runtime = self._runtime
        provider = runtime.provider
        # Only wrapping keys of this keyring are used, so an envelope cannot make the service
        # call an arbitrary KMS key. Every wrapping key a version ever had counts (until an
        # operator destroys it), so inline envelopes made before a rewrap keep decrypting.
        known = (header.provider, header.key_id) in runtime.wrapping_keys or (
            header.key_id in runtime.config.kms_key_ids
        )
        # The AWS provider enforces its own allow-list before any request, and it also knows
        # which key ARNs an alias has resolved to (an alias re-pointed to a new key yields
        # envelopes naming that key's ARN).
        delegated = isinstance(provider, EnforcesKeyAllowList) and (
            provider.enforces_key_allow_list
        )
        if header.provider != provider.name or not (known or delegated):
            raise DecryptionError()
        try:
            return provider.decrypt_data_key(header.key_id, header.wrapped_dek, ctx, runtime.limits)
        except KmsAccessDeniedError as exc:
            if known or exc.code != "KeyNotAllowed":
                raise
            # The provider refused, before any request, a key id that only the envelope
            # names: a forged or foreign envelope, reported like any other.
            raise DecryptionError() from None

    def _branch_data_key(
        self, header: EnvelopeHeader, envelope: bytes, ctx: EncryptionContext
    ) -> DataKey:
        # The cache id covers the context: the derived DEK depends on it.
        from greenlang_crypto.keys.branch import dek_cache_id

        runtime = self._runtime
        ref_id = dek_cache_id(envelope, ctx.canonical)
        with runtime.flight(b"dec|" + ref_id):
            cached = self._dec_cache.get(ref_id)
            if isinstance(cached, DataKey):
                return cached
            key = runtime.branches.data_key(
                header, envelope, ctx, runtime.limits, runtime.provider.name
            )
            runtime.cache_decryption_key(ref_id, key, header.key_version, ctx.data_class)
            return key

    def decrypt(
        self,
        ciphertext: bytes,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
    ) -> bytes:
        """Decrypts an envelope made by :meth:`encrypt` with the same context and binding.

        Raises:
            DecryptionError: Any authentication failure (opaque), or a malformed envelope.
            KeyVersionUnavailableError: The envelope's key version is not in the keyring.
            KeyRetiredError: The key version is below the minimum decryption version.
            KmsError: The provider failed (typed by cause).
        """
        envelope = ciphertext if type(ciphertext) is bytes else as_bytes(ciphertext, "ciphertext")
        ctx = context if type(context) is EncryptionContext else as_context(context)
        aad = associated_data if associated_data is None else check_aad(associated_data)
        try:
            out = self._dec_cache.open(envelope, ctx._canonical, aad)
            if out is None:
                key = self.data_key_for(envelope, ctx)
                out = open_envelope(key, envelope, ctx._canonical, aad)
                self._slow_counts[("decrypt", ctx.data_class)] += 1
        except DecryptionError as exc:
            self._failed("decryption_failed", "decrypt", exc, ctx)
            # Report a missing or retired key version as such, not as tampering: the version
            # comes from the public header, so naming it is no decryption oracle.
            if not isinstance(exc, InvalidEnvelopeError):
                self.check_version(parse_envelope(envelope).key_version)
            raise
        except GreenlangCryptoError as exc:
            self._failed("decryption_failed", "decrypt", exc, ctx)
            raise
        if self._per_op:
            self._emit("decryption_performed", data_class=ctx.data_class, size=len(out))
        return out

    def decrypt_str(self, /, ciphertext: bytes, context: ContextLike, **kwargs: Any) -> str:
        """Decrypts to a str (the plaintext must be UTF-8)."""
        data = self.decrypt(ciphertext, context, **kwargs)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("plaintext is not UTF-8") from None

    def decrypt_batch(
        self,
        ciphertexts: Sequence[bytes],
        context: ContextLike,
        *,
        associated_data: Sequence[bytes | None] | None = None,
    ) -> list[bytes]:
        """Decrypts many envelopes under one context."""
        aads = list(associated_data) if associated_data is not None else [None] * len(ciphertexts)
        if len(aads) != len(ciphertexts):
            raise InvalidArgumentError("associated_data must have one entry per ciphertext")
        ctx = as_context(context)
        return [
            self.decrypt(c, ctx, associated_data=a) for c, a in zip(ciphertexts, aads, strict=True)
        ]

    async def decrypt_async(
        self, /, ciphertext: bytes, context: ContextLike, **kwargs: Any
    ) -> bytes:
        """:meth:`decrypt` on a worker thread."""
        return await to_thread(self.decrypt, ciphertext, context, **kwargs)

    def value_decryptor(
        self,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
        text: bool = False,
        fallback: Callable[[Any], Any] | None = None,
    ) -> Callable[[Any], Any]:
        """A callable that decrypts one stored value under a fixed context and binding.

        Made for database result processing (one call per row): ``None`` stays ``None``; a
        value whose DEK is cached is opened (and UTF-8 decoded when ``text``) in a single Rust
        call; anything else goes to ``fallback`` (default: :meth:`decrypt`, with its errors and
        accounting), which must return what the fast path would.
        """
        ctx = as_context(context)
        aad = check_aad(associated_data)

        def decrypt_one(value: Any) -> Any:
            data = self.decrypt(value, ctx, associated_data=aad)
            if not text:
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise DecryptionError("plaintext is not UTF-8") from None

        opener = CachedOpener(self._dec_cache, ctx.canonical, aad, fallback or decrypt_one, text)
        # The bound method, not the object: it is called through vectorcall, without the
        # argument tuple a __call__ needs per value.
        return opener.open
