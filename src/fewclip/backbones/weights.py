"""Content hashes of weight files, memoised by (path, size, mtime) so a run hashes a file once."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterable

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def files_digest(files: Iterable[Path], memo_file: Path | None = None) -> str:
    """sha256 over ``name:sha256(content)`` of each file, in the given order."""
    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        with contextlib.suppress(ValueError, OSError):
            memo = json.loads(memo_file.read_text())
    total = hashlib.sha256()
    for path in files:
        real = path.resolve()
        stat = real.stat()
        key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in memo:
            digest = hashlib.sha256()
            with open(real, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            memo[key] = digest.hexdigest()
        total.update(f"{path.name}:{memo[key]}".encode())
    if memo_file is not None:
        from fewclip.fileio import write_json

        with contextlib.suppress(OSError):
            write_json(memo_file, memo)
    return total.hexdigest()


def weights_digest(folder: Path, memo_file: Path | None = None) -> str:
    """sha256 over the weight files of a model folder."""
    return files_digest(sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()), memo_file)
