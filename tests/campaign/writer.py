"""A campaign writer: encrypts values without pause and inserts each envelope into the table.

Run as ``python -m tests.campaign.writer NAME OUT_DIR`` with the ``GLC_*`` variables of the
campaign and ``GLC_CAMPAIGN_DB`` (the private cluster's ``postgresql://`` URL). Stops when
``OUT_DIR/stop`` exists.

History (``OUT_DIR/writer-NAME.jsonl``), two lines per operation, each flushed at once:

* ``encrypt``: the value, whether the call returned (``ok``) or raised (``err``), the envelope
  and its key version, this process's wall clock (``w0``/``w1``, possibly stepped by the
  nemesis) and monotonic clock (``m0``/``m1``) before and after the call, and ``anchor``;
* ``insert``: whether the row was committed, its id and the database's ``clock_timestamp()``.

The wall clock here may be stepped by hours, so the checker places a call on the database's
clock instead: ``anchor`` is ``[db, mb, ma]``, a ``clock_timestamp()`` this process read
between its monotonic instants ``mb`` and ``ma`` (the last committed insert). The monotonic
clock is not stepped (``DONT_FAKE_MONOTONIC``) and keeps running through SIGSTOP, so a call
began no earlier than ``db + (m0 - ma)`` on the database's clock.
"""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path


def _select_sleep(seconds: float) -> None:
    # libfaketime 0.9.10 with DONT_FAKE_MONOTONIC fails every clock_nanosleep (which
    # time.sleep uses) with EINVAL; select() waits the same relative time and is not affected.
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


if os.environ.get("GLC_CAMPAIGN_FAKETIME"):
    # Before anything imports the library: modules may bind time.sleep at import.
    time.sleep = _select_sleep

import psycopg  # noqa: E402

from greenlang_crypto import parse_envelope  # noqa: E402
from greenlang_crypto.config import EncryptionServiceConfig  # noqa: E402
from greenlang_crypto.exceptions import GreenlangCryptoError  # noqa: E402
from greenlang_crypto.service import EncryptionService  # noqa: E402
from tests.campaign.common import AAD, COLUMN, TABLE, JsonLog, context  # noqa: E402

#: Pause between operations (the runner sets it from the campaign's length): three writers,
#: an admin, jobs and PostgreSQL share two cores, and every rotation re-encrypts the whole
#: table, so the table must stay small enough for a job to finish between faults.
PAUSE = float(os.environ.get("GLC_CAMPAIGN_WRITER_PAUSE") or 0.02)


def _connect(url: str) -> psycopg.Connection | None:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=2)
    except psycopg.Error:
        return None


def _anchor(url: str, stop: Path) -> tuple[float, float, float]:
    """A first reading of the database clock (waits while PostgreSQL is down)."""
    while not stop.exists():
        mb = time.monotonic()
        conn = _connect(url)
        if conn is not None:
            with conn:
                row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
            assert row is not None
            return float(row[0]), mb, time.monotonic()
        time.sleep(0.2)
    raise SystemExit(0)


def _service(stop: Path) -> EncryptionService:
    # PostgreSQL may be down when a writer starts (it is not, in this campaign, but a writer
    # must not die of it): an application retries building its service.
    while True:
        try:
            return EncryptionService(EncryptionServiceConfig.from_env())
        except GreenlangCryptoError:
            if stop.exists():
                raise SystemExit(0) from None
            time.sleep(0.2)


def main(name: str, out_dir: Path) -> None:
    url = os.environ["GLC_CAMPAIGN_DB"]
    stop = out_dir / "stop"
    anchor = _anchor(url, stop)
    svc = _service(stop)
    ctx = context()
    log = JsonLog(out_dir / f"writer-{name}.jsonl")
    conn = _connect(url)
    nonce = os.urandom(4).hex()
    seq = 0
    insert_sql = (
        f"INSERT INTO {TABLE} (writer, seq, value, {COLUMN}) VALUES (%s, %s, %s, %s) "
        "RETURNING id, extract(epoch FROM clock_timestamp())"
    )
    while not stop.exists():
        seq += 1
        value = f"{name}-{seq}-{nonce}"
        ref = "inline" if seq % 3 == 0 else "stored"
        base = {"w": name, "seq": seq, "value": value, "ref": ref, "anchor": list(anchor)}
        w0, m0 = time.time(), time.monotonic()
        try:
            envelope = svc.encrypt(value.encode(), ctx, associated_data=AAD, key_reference=ref)
        except GreenlangCryptoError as exc:
            m1, w1 = time.monotonic(), time.time()
            log.write(
                op="encrypt", ok=False, err=type(exc).__name__, w0=w0, w1=w1, m0=m0, m1=m1, **base
            )
            time.sleep(0.05)
            continue
        m1, w1 = time.monotonic(), time.time()
        version = parse_envelope(envelope).key_version
        log.write(
            op="encrypt",
            ok=True,
            env=envelope.hex(),
            v=version,
            w0=w0,
            w1=w1,
            m0=m0,
            m1=m1,
            **base,
        )
        if conn is None or conn.closed:
            conn = _connect(url)
        mi0 = time.monotonic()
        try:
            if conn is None:
                raise psycopg.OperationalError("no connection")
            row = conn.execute(insert_sql, (name, seq, value, envelope)).fetchone()
            assert row is not None
        except psycopg.Error as exc:
            # Indeterminate: the commit may have happened before the connection broke. The
            # table, read after the campaign, says which.
            log.write(op="insert", w=name, seq=seq, ok=False, err=type(exc).__name__, m0=mi0)
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
            continue
        mi1 = time.monotonic()
        anchor = (float(row[1]), mi0, mi1)
        log.write(
            op="insert", w=name, seq=seq, ok=True, id=int(row[0]), db=float(row[1]), m0=mi0, m1=mi1
        )
        time.sleep(PAUSE)
    svc.close()
    if conn is not None:
        conn.close()
    log.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
