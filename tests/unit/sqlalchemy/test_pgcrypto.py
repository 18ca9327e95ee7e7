"""pgcrypto columns without a server: which settings would log the column key, the SQL the
type compiles to (the key never in it), and the per-column secret (round trips and the
logging refusal on PostgreSQL: ``tests/integration/sqlalchemy/test_pgcrypto.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select
from sqlalchemy.dialects import postgresql

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import PgcryptoString  # the package attaches columns
from greenlang_crypto.sqlalchemy.pgcrypto import _ms, logging_exposure

SAFE = ("none", "-1", "-1", "0", "0", None)


@pytest.mark.parametrize(
    ("value", "ms"),
    [(None, -1), ("", -1), ("-1", -1), ("0", 0), ("250ms", 250), ("2s", 2000),
     ("1min", 60_000), ("1h", 3_600_000), ("soon", 0), ("xs", 0)],
)  # fmt: skip
def test_duration_settings_read_in_milliseconds(value: str | None, ms: int) -> None:
    assert _ms(value) == ms


def test_a_quiet_server_exposes_nothing() -> None:
    assert logging_exposure(SAFE) == []


@pytest.mark.parametrize(
    ("index", "value", "named"),
    [
        (0, "all", "log_statement=all"),
        (0, "mod", "log_statement=mod"),
        (1, "0", "log_min_duration_statement=0"),
        (2, "100ms", "log_min_duration_sample=100ms"),
        (4, "-1", "log_parameter_max_length_on_error=-1"),
        (5, "0", "auto_explain.log_min_duration=0"),
    ],
)
def test_each_setting_that_logs_bound_values_is_named(index: int, value: str, named: str) -> None:
    settings = list(SAFE)
    settings[3] = "-1"  # parameters are logged in full
    settings[index] = value
    assert logging_exposure(tuple(settings)) == [named]


def test_statement_logging_without_parameters_exposes_nothing() -> None:
    assert logging_exposure(("all", "0", "0", "0", "0", None)) == []
    assert logging_exposure(("all", "-1", None, None, None, None)) == ["log_statement=all"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    data = tmp_path_factory.mktemp("data")
    LocalKeyProvider(data).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data))
    svc.blind_index_key("warm-up")  # creates index key version 1
    yield svc
    svc.close()


def _table(service: EncryptionService, name: str = "people", **kw: object) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("ssn", PgcryptoString(service, **kw)),  # type: ignore[arg-type]
    )


def test_writes_encrypt_and_reads_decrypt_in_the_server_with_the_key_bound(
    service: EncryptionService,
) -> None:
    people = _table(service)
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    sql = str(insert(people).values(id=1, ssn="123").compile(dialect=dialect))
    assert "pgp_sym_encrypt(" in sql and "'cipher-algo=aes256'" in sql
    read = str(select(people.c.ssn).compile(dialect=dialect))
    assert "pgp_sym_decrypt(people.ssn" in read
    secret = people.c.ssn.type._key()
    assert len(secret) == 64 and secret not in sql and secret not in read


def test_the_secret_is_per_column_and_per_key_version(service: EncryptionService) -> None:
    a = _table(service, "people").c.ssn.type._key()
    assert _table(service, "people").c.ssn.type._key() == a  # derived, not random
    assert _table(service, "staff").c.ssn.type._key() != a
    assert _table(service, "staff", location="people.ssn").c.ssn.type._key() == a
    service.rotate_index_key()
    assert _table(service, "people", key_version=2).c.ssn.type._key() != a


def test_a_detached_column_has_no_key(service: EncryptionService) -> None:
    with pytest.raises(InvalidArgumentError, match="not attached"):
        PgcryptoString(service)._key()


def test_the_service_may_be_given_late(service: EncryptionService) -> None:
    late = _table(service, "late").c.ssn.type._key()
    people = Table("late", MetaData(), Column("ssn", PgcryptoString(lambda: service)))
    assert people.c.ssn.type._key() == late
    assert PgcryptoString(service, allow_logged_key=True).allow_logged_key
