"""Starts a moto KMS server for the integration tests, with moto's multi-region-key bug fixed.

Usage: ``python tests/kms_server.py --port 5055 [--host 127.0.0.1]``.

moto (checked against 5.2.5) writes the key id into a fixed 36-byte ciphertext header, but
multi-region key ids (``mrk-`` + UUID) have 40 characters, so the id is truncated and an MRK
ciphertext can never be decrypted. Real KMS has no such limit, so the tests would otherwise be
unable to exercise replica failover at all. The fix widens the header to 40 bytes and strips
the NUL padding that ``struct`` adds to the (36-character) ids of single-region keys. Only the
server process is patched; the library under test talks to it over HTTP like to real KMS.
"""

from __future__ import annotations

import argparse
import struct
import sys


def patch_moto_kms() -> None:
    """Widens moto's ciphertext key-id field to 40 bytes so MRK ciphertexts decrypt."""
    from moto.kms import utils

    # Fail loudly if a moto upgrade changes the code this patch relies on, rather than
    # silently running tests against a server that cannot decrypt MRK ciphertexts.
    for name in ("KEY_ID_LEN", "IV_LEN", "TAG_LEN", "HEADER_LEN", "CIPHERTEXT_HEADER_FORMAT"):
        if not hasattr(utils, name):
            raise RuntimeError(f"moto.kms.utils has no {name}; update tests/kms_server.py")

    key_id_len = 40
    utils.KEY_ID_LEN = key_id_len  # type: ignore[misc]
    utils.HEADER_LEN = key_id_len + utils.IV_LEN + utils.TAG_LEN  # type: ignore[misc]
    utils.CIPHERTEXT_HEADER_FORMAT = (  # type: ignore[misc]
        f">{key_id_len}s{utils.IV_LEN}s{utils.TAG_LEN}s"
    )

    def _deserialize_ciphertext_blob(ciphertext_blob: bytes) -> utils.Ciphertext:
        header = ciphertext_blob[: utils.HEADER_LEN]
        ciphertext = ciphertext_blob[utils.HEADER_LEN :]
        key_id, iv, tag = struct.unpack(utils.CIPHERTEXT_HEADER_FORMAT, header)
        # struct pads shorter (36-character, single-region) ids with NULs.
        return utils.Ciphertext(
            key_id=key_id.rstrip(b"\x00").decode("utf-8"), iv=iv, ciphertext=ciphertext, tag=tag
        )

    # utils.decrypt looks the helper up as a module global at call time, so this takes effect.
    utils._deserialize_ciphertext_blob = _deserialize_ciphertext_blob


def main(argv: list[str] | None = None) -> None:
    """Parses ``--host``/``--port``, patches moto and serves until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", "-H", default="127.0.0.1")
    parser.add_argument("--port", "-p", type=int, default=5055)
    args = parser.parse_args(argv)

    patch_moto_kms()

    from moto.server import main as moto_main

    moto_main(["-H", args.host, "-p", str(args.port)])


if __name__ == "__main__":
    main(sys.argv[1:])
