"""The model and the runner process of the autopilot tests.

As a module it is the application's model: ``Base`` with one table, ``ap_people``, whose
``email`` is encrypted (fixed tenant ``acme``) with a blind index. Its column type finds its
service through :func:`service`, which a test sets (:func:`use_service`) or which is built
from ``GLC_*`` variables, as a deployed instance would.

As a script, ``python -m tests.integration.autopilot_proc DB_URL BUDGET MAX_ROWS_PER_SECOND
CLOCK_OFFSET [LOCK_KEY]`` runs one autopilot step and prints its report as one JSON line (a
line ``started`` first, once the service is up). With ``AP_GO_FILE`` set, the step waits
until that file exists, so that competing runners start it together.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from sqlalchemy import BigInteger, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString

_current: dict[str, EncryptionService] = {}


def use_service(svc: EncryptionService | None) -> None:
    """Makes ``svc`` the service of the model's column type (``None``: forget it)."""
    _current.pop("service", None)
    if svc is not None:
        _current["service"] = svc


def service() -> EncryptionService:
    """The model's service (built from ``GLC_*`` variables on first use if none was set)."""
    if "service" not in _current:
        _current["service"] = EncryptionService(EncryptionServiceConfig.from_env())
    return _current["service"]


class Base(DeclarativeBase):
    """The test application's models."""


class Person(Base):
    """A row with an encrypted, blind-indexed e-mail address."""

    __tablename__ = "ap_people"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column(
        EncryptedString(service, data_class="pii", tenant_id="acme"), nullable=True
    )
    email_idx: Mapped[bytes | None] = mapped_column(
        BlindIndex("email", normalizer=EMAIL), nullable=True
    )


def main(argv: list[str]) -> int:
    from greenlang_crypto.sqlalchemy.autopilot import (
        AUTOPILOT_LOCK_KEY,
        ColumnRegistry,
        run_autopilot_once,
    )

    url, budget, rate, offset = argv[0], float(argv[1]), float(argv[2]), float(argv[3])
    key = int(argv[4]) if len(argv) > 4 else AUTOPILOT_LOCK_KEY
    svc = service()
    # Named, so that a test can tell when the server has let a killed runner's sessions go.
    engine = create_engine(
        url, hide_parameters=True, connect_args={"application_name": "autopilot-proc"}
    )
    print(json.dumps({"started": True}), flush=True)
    go = os.environ.get("AP_GO_FILE")
    while go and not os.path.exists(go):
        time.sleep(0.005)  # a barrier: competing runners start their step together
    report = run_autopilot_once(
        engine,
        svc,
        ColumnRegistry.from_metadata(Base),
        budget_seconds=budget,
        max_rows_per_second=rate or None,
        clock=lambda: time.time() + offset,
        batch_size=20,
        lock_key=key,
    )
    print(json.dumps(report.as_dict()), flush=True)
    engine.dispose()
    svc.close()
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def envelope_versions(engine: Any) -> dict[int, int]:
    """Rows of ``ap_people`` per key version, read from the stored envelopes' headers."""
    from sqlalchemy import text

    from greenlang_crypto import parse_envelope

    out: dict[int, int] = {}
    with engine.connect() as conn:
        for (value,) in conn.execute(text("SELECT email FROM ap_people")):
            v = parse_envelope(bytes(value)).key_version
            out[v] = out.get(v, 0) + 1
    return out
