"""read_bounded: a user's file read whole up to a cap, judged by what is read, not by what stat said."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgemm import fsio
from edgemm.errors import InputPathError, InputTooLargeError


def test_reads_small_empty_and_cap_sized_files_whole(tmp_path: Path):
    for name, payload in (("empty", b""), ("small", b"\x89PNG" + bytes(range(20))), ("cap", b"x" * 64)):
        path = tmp_path / name
        path.write_bytes(payload)
        assert fsio.read_bounded(path, 64, "Image file") == payload


def test_a_file_over_the_cap_is_refused_by_its_size(tmp_path: Path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 65)
    with pytest.raises(InputTooLargeError) as info:
        fsio.read_bounded(path, 64, "Image file")
    assert info.value.details == {"path": str(path), "bytes": 65, "max_bytes": 64}


def _stat_says(monkeypatch, size: int) -> None:
    """Make the first look (the size check) see ``size`` bytes, as if the file grew after it."""
    real = fsio.stat_input
    calls = []

    def first_look_smaller(path, what):
        st = real(path, what)
        calls.append(path)
        if len(calls) > 1:
            return st  # open_input's own look, compared with the opened descriptor
        return SimpleNamespace(st_size=size, st_mode=st.st_mode, st_dev=st.st_dev, st_ino=st.st_ino)

    monkeypatch.setattr(fsio, "stat_input", first_look_smaller)


def test_a_file_that_grew_after_stat_is_read_whole_within_the_cap(tmp_path: Path, monkeypatch):
    path = tmp_path / "growing"
    payload = os.urandom(5000)  # more than the first read asks for (the size stat saw, plus one)
    path.write_bytes(payload)
    _stat_says(monkeypatch, 10)
    assert fsio.read_bounded(path, 8000, "Image file") == payload


def test_a_file_that_grew_past_the_cap_after_stat_is_refused(tmp_path: Path, monkeypatch):
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 9000)
    _stat_says(monkeypatch, 10)
    with pytest.raises(InputTooLargeError) as info:
        fsio.read_bounded(path, 8000, "Image file")
    assert info.value.details["bytes"] == 8001 and "or more" in info.value.message


def test_a_directory_or_fifo_is_refused_without_reading(tmp_path: Path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo):
        with pytest.raises(InputPathError):
            fsio.read_bounded(path, 64, "Image file")
