"""Loading the audit chain key: the root key the sink stores wrapped, unwrapped by the provider.

The log never sees the provider: it is given a
:class:`~greenlang_crypto.observing.SystemKeyHandle` and stores what the handle's ``generate``
returns (wrapped, with the wrapping key id and the provider name) in the sink's metadata.
"""

from __future__ import annotations

import base64
import json

from greenlang_crypto.audit.chain import _ROOT_META, AUDIT_CONTEXT, ChainKey, _unwrap_root
from greenlang_crypto.audit.sinks.base import AuditSink
from greenlang_crypto.observing import SystemKeyHandle

__all__ = ["load_chain_key"]


def load_chain_key(
    sink: AuditSink, system_keys: SystemKeyHandle, *, create: bool = True
) -> ChainKey | None:
    """The chain key of the log in ``sink``, created first when the sink holds none.

    Two writers starting at once may both generate a root key; the sink keeps the first one
    stored and both use it (``put_meta_if_absent``).

    Args:
        sink: The audit sink (its metadata holds the wrapped root key).
        system_keys: Generates and unwraps the root key.
        create: Make and store a root key when the sink holds none; when false, return None
            instead.

    Returns:
        The chain key, or None when there is no root key and ``create`` is false.

    Raises:
        AuditSinkUnavailableError: The sink cannot be read or written, or the stored root key
            is malformed.
        DecryptionError: The stored root key does not unwrap (another provider wrapped it).
    """
    stored = sink.get_meta(_ROOT_META)
    if stored is None:
        if not create:
            return None
        generated = system_keys.generate(AUDIT_CONTEXT)
        candidate = json.dumps(
            {
                "provider": system_keys.provider_name,
                "key_id": generated.key_id,
                "wrapped": base64.b64encode(generated.wrapped).decode(),
            }
        )
        stored = sink.put_meta_if_absent(_ROOT_META, candidate)
    return ChainKey.from_root(_unwrap_root(system_keys.unwrap, stored))
