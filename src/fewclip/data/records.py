"""Image records: the rows of train_full.csv, test.csv and every split file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fewclip.fileio import read_csv, write_csv

RECORD_COLUMNS = ("path", "label", "class_name", "sha1")


@dataclass(frozen=True)
class Record:
    """One image: ``path`` is relative to the data folder or absolute; ``sha1`` hashes its bytes."""

    path: str
    label: int
    class_name: str
    sha1: str

    def resolve(self, data_dir: Path) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else data_dir / path


def write_records(path: Path | str, records: Sequence[Record]) -> None:
    write_csv(path, RECORD_COLUMNS, ((r.path, r.label, r.class_name, r.sha1) for r in records))


def read_records(path: Path | str) -> list[Record]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `fewclip prepare` with this config first")
    rows = read_csv(path)
    try:
        return [Record(r["path"], int(r["label"]), r["class_name"], r["sha1"]) for r in rows]
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: malformed record file ({err}); expected columns {RECORD_COLUMNS}") from err
