"""A CSV of ``path,label`` rows (paths absolute or relative to the CSV's folder or ``root``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import ClassVar, Iterator, Literal

from pydantic import Field

from fewclip.data.sources.base import TEST_ONLY, SourceConfig, SourceItem, Split, TestShare, missing_path_message
from fewclip.data.sources.folder import in_test_share
from fewclip.data.sources.registry import register_source


class CsvSourceConfig(SourceConfig):
    source: Literal["csv"] = "csv"
    path_keys: ClassVar[dict[str, str]] = {"train": "file", "test": "file", "root": "folder"}
    train: str = Field(description="CSV with columns path,label for the train split (or all data).")
    test: str | None = Field(None, description="CSV for the test split; without it test_fraction is held out.")
    root: str | None = Field(None, description="Folder relative paths are resolved against (default: the CSV's).")
    path_column: str = Field("path", description="The column holding each image's path.")
    label_column: str = Field("label", description="The column holding each image's class name.")
    test_fraction: TestShare = Field(0.2, description=f"Share held out for test without a test CSV ({TEST_ONLY}).")

    def default_label(self) -> str:
        return Path(self.train).stem


def read_csv_text(file: Path) -> str:
    """The CSV's text: UTF-8, with or without the byte-order mark Excel writes; otherwise an error naming
    the file, the line and the byte."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{file}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the CSV as UTF-8 "
            "(Excel: 'CSV UTF-8'), then run prepare again"
        ) from None


@register_source
class CsvSource:
    Config = CsvSourceConfig

    def __init__(self, config: CsvSourceConfig) -> None:
        self.config = config
        self.train_rows = self._read("train")
        self.test_rows = self._read("test") if config.test else None  # None: the test share is held out of train

    def _read(self, key: str) -> list[tuple[Path, str, str, str]]:
        """The rows of the CSV named by ``key`` (train or test): (path, label, origin, path as written)."""
        file = Path(getattr(self.config, key)).expanduser()
        if not file.is_file():
            raise FileNotFoundError(missing_path_message(self.config, key, "file"))
        root = Path(self.config.root).expanduser() if self.config.root else file.parent
        if self.config.root and not root.is_dir():
            raise FileNotFoundError(missing_path_message(self.config, "root", "folder"))
        cols = (self.config.path_column, self.config.label_column)
        text = read_csv_text(file)
        expected = f"a header line `{','.join(cols)}`, then one row per image"
        if not text.strip():
            raise ValueError(
                f"{self.config.key}.{key}: {file} is empty ({len(text.encode())} bytes); a CSV source needs {expected}"
            )
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in cols if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{file}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            raw = (row[cols[0]] or "").strip()
            path = Path(raw) if Path(raw).is_absolute() else root / raw
            rows.append((path, (row[cols[1]] or "").strip(), f"{file}:{line}", raw))
        if not rows:
            raise ValueError(
                f"{self.config.key}.{key}: {file} has its header ({','.join(reader.fieldnames or [])}) "
                f"but no rows; add one row per image ({','.join(cols)}, e.g. images/cat/0001.jpg,cat)"
            )
        return rows

    def _rows(self, split: Split) -> list[tuple[Path, str, str, str]]:
        """The rows that list ``split``'s images: the test CSV's for test when there is one, else the train CSV's."""
        return self.test_rows if split == "test" and self.test_rows is not None else self.train_rows

    def class_names(self, split: Split = "train") -> list[str]:
        return sorted({label for _, label, _, _ in self._rows(split)})

    def items(self, split: Split, classes: list[str]) -> Iterator[SourceItem]:
        wanted = set(classes)
        held_out_split = self.test_rows is None
        for path, label, where, raw in self._rows(split):
            if label not in wanted:
                continue
            # Keyed by the path as written in the CSV, so the hold-out is the same wherever the CSV lives.
            if held_out_split and in_test_share(f"{label}/{raw}", self.config.test_fraction) != (split == "test"):
                continue
            yield SourceItem(class_name=label, origin=where, path=path)
