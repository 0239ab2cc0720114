"""Atomic file writes: a reader never sees a half-written file, a killed writer leaves no torn one.

A write goes to a uniquely named temporary beside its target (``.<name>.p<pid>h<host>.<random>.tmp``)
and is renamed over it. A killed writer can leave its temporary behind; ``remove_stale_temporaries``
deletes those whose writer is gone, and never one that a live writer is still filling.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"\..+\.p(\d+)h([0-9a-f]{8})\.[^.]+\.tmp")
STALE_AFTER_SECONDS = 3600  # a temporary of unknown owner (another host, an old version) this old is debris


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.p{os.getpid()}h{_HOST}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files owner-only; give them the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise disk_full(path, err) from err
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path, err: OSError) -> OSError:
    """The same OSError, with a message that names the file being written and says the disk is full."""
    what = "disk full" if err.errno == errno.ENOSPC else "disk quota exceeded"
    return OSError(
        err.errno,
        f"{what} while writing {path}: free space on that disk (or choose another "
        "output.dir / cache.dir), then run the same command again; finished work is kept",
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale_temporary(path: Path) -> bool:
    """A ``*.tmp`` whose writer is no longer running: a dead process of this host, or else old."""
    match = _TEMP_NAME.fullmatch(path.name)
    if match and match[2] == _HOST:
        return not _process_alive(int(match[1]))
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_SECONDS


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the ``*.tmp`` files under ``folder`` left by killed writers; returns what was removed."""
    removed = []
    for path in sorted(Path(folder).rglob("*.tmp")) if Path(folder).is_dir() else ():
        if path.is_file() and is_stale_temporary(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path | str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_csv(path: Path | str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_csv_or_json(
    path: Path | str, what: str, document: Any, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """``path`` as its suffix says: ``.json`` holds ``document``, ``.csv`` ``header`` and ``rows``; another suffix is
    a ValueError saying that ``what`` (e.g. "predictions") is written as .csv or .json."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"{path}: {what} are written as .csv or .json")
    if suffix == ".json":
        write_json(path, document)
    else:
        write_csv(path, header, rows)


def read_csv(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
