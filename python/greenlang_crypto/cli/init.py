"""``greenlang-crypto init``: the data directory, the first master key and the keyring."""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
from pathlib import Path

from greenlang_crypto import composition
from greenlang_crypto._files import atomic_directory, output_error
from greenlang_crypto.cli._common import config_of
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import ConfigurationError, OutputError

__all__ = ["cmd_init"]


def cmd_init(args: argparse.Namespace) -> int:
    """Creates the data directory, the first master key and the keyring, all or nothing."""
    cfg = config_of(args)
    if cfg.provider == "local":
        created = False
        if not composition.local_master_key_exists(cfg.data_dir):
            created = _init_data_dir(cfg)
        svc = composition.init_local_service(cfg)
        if created:
            print(f"created the master key in {cfg.data_dir} (mode 0600)")
        else:
            print(f"already initialized: {cfg.data_dir}")
    else:
        svc = composition.build_service(cfg)
    print(f"keyring ready: primary version {svc.primary_version}")
    svc.close()
    return 0


def _init_data_dir(cfg: EncryptionServiceConfig) -> bool:
    """Builds the data directory beside its name and renames it into place.

    A directory half made (a full disk, a kill) would hold a key store without its master
    key, or a master key without its keyring, and the next run would take it for an
    initialized one. Built under a temporary name, it is complete or absent. Returns False
    when another ``init`` finished first (its directory is the one kept).

    Raises:
        ConfigurationError: The directory exists, is not empty and holds no master key.
        OutputError: The directory could not be written (a full disk, say); nothing is left.
    """
    target = Path(cfg.data_dir)
    with contextlib.suppress(FileNotFoundError):
        if any(target.iterdir()):
            if composition.local_master_key_exists(target):
                return False  # another init finished meanwhile
            raise ConfigurationError(
                f"{target} is not empty and holds no master key; move it away (or empty it) "
                "and run `greenlang-crypto init` again"
            )
    values = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    try:
        with atomic_directory(target) as building:
            values["data_dir"] = building
            try:
                if cfg.key_store_url is None:
                    # The embedded default: the keyring lives in the directory too.
                    composition.init_local_service(EncryptionServiceConfig(**values)).close()
                else:
                    # The keyring lives in the configured store, opened once the master key
                    # has its final place.
                    composition.create_local_master_key(building)
            except OSError as exc:
                raise output_error(target, exc) from exc
            except sqlite3.Error as exc:
                # The embedded key store is a file in the directory being built: its
                # failure is a write that failed here (a full disk), not an outage to wait
                # out. SQLite's messages name the condition, never data.
                raise OutputError(f"cannot write {target}: {exc}") from exc
    except FileExistsError:
        return False
    return True
