"""A full disk while writing: the error names the file being written and says the disk is full."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fewclip import fileio


def test_disk_full_names_the_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    target = tmp_path / "results" / "summary.csv"
    with pytest.raises(OSError) as info:
        fileio.write_csv(target, ("a",), [(1,)])
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (
        f"[Errno {errno.ENOSPC}] disk full while writing {target}: free space on that disk "
        "(or choose another output.dir / cache.dir), then run the same command again; "
        "finished work is kept"
    )
    assert list(target.parent.iterdir()) == []


def test_other_write_errors_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(fd: int) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fileio.os, "fsync", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        fileio.atomic_write_text(tmp_path / "x.txt", "x")
