"""The ORM hooks are in place for models that import the column types directly.

Each check runs in a fresh interpreter: the hooks module, once imported by any test, stays
imported, which would hide a missing load.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_MODEL = """
import sys
from sqlalchemy import String, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column
{imports}

HOOKS = "greenlang_crypto.sqlalchemy.orm"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(40))
    email: Mapped[str] = mapped_column(
        EncryptedString(lambda: None, data_class="pii", tenant_id=FromRow("tenant"))
    )
    email_bidx: Mapped[bytes] = mapped_column(BlindIndex("email"))


configure_mappers()
orm = sys.modules[HOOKS]
mapper = inspect(User)
binder = orm._binders[mapper]
assert [key for key, _ in binder.sealed] == ["email"], binder.sealed
assert [entry[0] for entry in binder.indexes] == ["email_bidx"], binder.indexes
assert mapper.attrs.email_bidx.deferred
print("ok")
"""

IMPORTS = {
    "types": """
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy.types import EncryptedString
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex
""",
    "blind_index first": """
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy.types import EncryptedString
""",
    "package": """
from greenlang_crypto.sqlalchemy import BlindIndex, EncryptedString, FromRow
""",
}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("how", sorted(IMPORTS))
def test_mappers_get_the_hooks_however_the_types_were_imported(how: str) -> None:
    run = _run(_MODEL.format(imports=IMPORTS[how]))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_the_hooks_reach_mappers_configured_after_earlier_ones() -> None:
    # A first configuration run (of a model without encrypted columns) loads the hooks; a
    # model declared afterwards is configured in a later run and must get them too.
    code = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column
    from greenlang_crypto.sqlalchemy.types import EncryptedString


    class Base(DeclarativeBase):
        pass


    class Plain(Base):
        __tablename__ = "plain"
        id: Mapped[int] = mapped_column(primary_key=True)


    configure_mappers()


    class Late(Base):
        __tablename__ = "late"
        id: Mapped[int] = mapped_column(primary_key=True)
        secret: Mapped[str] = mapped_column(
            EncryptedString(lambda: None, data_class="pii", tenant_id="t1", bind_row=True)
        )


    configure_mappers()
    from sqlalchemy import inspect
    from greenlang_crypto.sqlalchemy import orm

    assert inspect(Plain) not in orm._binders
    assert [key for key, _ in orm._binders[inspect(Late)].sealed] == ["secret"]
    print("ok")
    """
    run = _run(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        ("types", ["blind_index", "orm"]),
        ("_index_lookup", ["types", "blind_index", "orm"]),
        ("_orm_loader", ["types", "blind_index", "orm"]),
        ("blind_index", ["orm"]),
    ],
)
def test_importing_a_layer_loads_nothing_above_it(module: str, must_not_load: list[str]) -> None:
    # The layering at run time: a module loads only the layers below it (the hooks come later,
    # when mappers are configured).
    package = "greenlang_crypto.sqlalchemy"
    code = f"""
    import importlib, sys
    importlib.import_module("{package}.{module}")
    print(",".join(m for m in {must_not_load!r} if "{package}." + m in sys.modules))
    """
    run = _run(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""
