"""`keys branch-rotate` and `keys branch-delete` in subprocesses: audited, and a deletion
needs confirmation and crypto-shreds only the tenant it names."""

from __future__ import annotations

from pathlib import Path

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import KeyNotFoundError
from greenlang_crypto.service import EncryptionService
from tests.clirun import run


def test_branch_rotate_and_delete_from_the_cli(tmp_path: Path) -> None:
    assert run(tmp_path, "init").returncode == 0
    cfg = EncryptionServiceConfig(
        data_dir=tmp_path / "data", key_reference="branch", keyring_refresh_seconds=0
    )
    svc = EncryptionService(cfg)
    acme, globex = EncryptionContext("acme", "pii"), EncryptionContext("globex", "pii")
    env_acme, env_globex = svc.encrypt(b"a", acme), svc.encrypt(b"g", globex)
    old_id = parse_envelope(env_globex).branch_id
    rotated = run(tmp_path, "keys", "branch-rotate", "--tenant", "globex")
    assert rotated.returncode == 0, rotated.stderr
    assert b"branch key of tenant:globex rotated" in rotated.stdout
    svc.refresh_keyring()
    assert parse_envelope(svc.encrypt(b"g2", globex)).branch_id != old_id
    assert svc.decrypt(env_globex, globex) == b"g"
    refused = run(tmp_path, "keys", "branch-delete", "--scope", "tenant:acme")
    assert refused.returncode == 2 and b"--yes" in refused.stderr
    assert svc.decrypt(env_acme, acme) == b"a"
    deleted = run(tmp_path, "keys", "branch-delete", "--tenant", "acme", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert b"deleted 1 branch key(s) of tenant:acme" in deleted.stdout
    svc.refresh_keyring()
    try:
        svc.decrypt(env_acme, acme)
        raise AssertionError("a deleted branch key still decrypts")
    except KeyNotFoundError:
        pass
    assert svc.decrypt(env_globex, globex) == b"g"
    # Both changes are in the audit log.
    tail = run(tmp_path, "audit", "tail", "-n", "20").stdout
    assert b"branch_key_rotate" in tail and b"branch_key_delete" in tail
    assert run(tmp_path, "keys", "branch-rotate").returncode == 2
    svc.close()
