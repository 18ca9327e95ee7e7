"""What the campaign's processes share: the table, the context, the history files.

Every process of a campaign reads the same ``GLC_*`` variables (the key store of the private
cluster, the shared data directory with the local master keys) and writes JSON lines into
one output directory. A line is written with one ``write`` and flushed, so a reader sees
whole lines; a reader still skips a partial last line, since a writer may be stopped anywhere.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

TABLE = "campaign_values"
COLUMN = "secret"
TENANT = "campaign"
DATA_CLASS = "pii"
#: The associated data the column jobs compute for a column not bound to its row (they and the
#: writers must agree byte for byte, or the job could not open what the writers sealed).
AAD = f"{TABLE}|{COLUMN}".encode()
#: ``keyring_refresh_seconds`` of every instance of the campaign (short, so that the fence and
#: liveness windows are a few seconds and a pause of 5-30 s outlasts them).
REFRESH = 0.5
#: How long after its last heartbeat an instance still counts as live.
LIVENESS = 3 * REFRESH + 2

CREATE_TABLE = f"""
CREATE TABLE {TABLE} (
    id bigserial PRIMARY KEY,
    writer text NOT NULL,
    seq integer NOT NULL,
    value text NOT NULL,
    {COLUMN} bytea NOT NULL,
    UNIQUE (writer, seq)
)
"""


def context() -> Any:
    """The encryption context of every value (the one the column job builds)."""
    from greenlang_crypto import EncryptionContext

    return EncryptionContext(tenant_id=TENANT, data_class=DATA_CLASS)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (none if it does not exist)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class JsonLog:
    """An append-only JSON-lines file, flushed after every record."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a")

    def write(self, **record: Any) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def wall() -> float:
    """The wall clock (the admin and the runner are never under faketime: this is real time)."""
    return time.time()
