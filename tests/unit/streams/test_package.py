"""The streams package: what it offers, and tuning names set on it reach the modules using them."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from greenlang_crypto import _files, streams
from greenlang_crypto.streams import _io, _open, _pipeline, _pull, _seal
from tests.unit.streams._keys import SEG, StreamKeys

#: Each name the package offers, with the module that defines it.
OFFERED = {
    "DecryptingReader": _open,
    "EncryptingReader": _pull,
    "RUN_BYTES": _io,
    "TAG_LEN": _io,
    "_HandOff": _pull,
    "_IterReader": _io,
    "_ReadAdapter": _io,
    "_Readable": _io,
    "_Writable": _io,
    "_Writer": _pipeline,
    "_fill": _io,
    "_seal_runs": _seal,
    "_write_all": _io,
    "_write_runs": _pipeline,
    "as_reader": _io,
    "atomic_output": _files,
    "decrypt_to": _open,
    "encrypt_to": _seal,
    "is_stream": _io,
    "read_header": _open,
    "regular_file_size": _files,
    "sealed_runs": _seal,
}


@pytest.mark.parametrize("name", sorted(OFFERED))
def test_the_package_offers_each_name_of_its_modules(name: str) -> None:
    assert getattr(streams, name) is getattr(OFFERED[name], name)


def test_all_lists_the_public_entry_points() -> None:
    assert sorted(streams.__all__) == [
        "DecryptingReader",
        "EncryptingReader",
        "atomic_output",
        "decrypt_to",
        "encrypt_to",
        "is_stream",
        "read_header",
        "sealed_runs",
    ]


def test_setting_run_bytes_on_the_package_reaches_every_module(
    keys: StreamKeys, data: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "RUN_BYTES", 2 * SEG)
    assert _io.RUN_BYTES == 2 * SEG
    views = list(_seal.sealed_runs(keys.encryptor(), io.BytesIO(data(5 * SEG)), max_bytes=1 << 30))
    assert len(views) == 1 + 3  # the header and runs of two, two and one segments
    monkeypatch.undo()
    assert streams.RUN_BYTES == _io.RUN_BYTES == 1 << 20


def test_setting_the_writer_on_the_package_reaches_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Any] = []

    class Counted(_pipeline._Writer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(streams, "_Writer", Counted)
    sink = io.BytesIO()
    views = iter([(memoryview(b"ab"), 2), (memoryview(b"cd"), 2), (memoryview(b"ef"), 2)])
    _pipeline._write_runs(views, sink, None)
    assert sink.getvalue() == b"abcdef"
    assert len(made) == 1


def test_other_names_are_set_on_the_package_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "TAG_LEN", 99, raising=True)
    assert streams.TAG_LEN == 99
    assert _io.TAG_LEN == 16
