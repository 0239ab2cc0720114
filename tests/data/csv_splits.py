"""Shared by the data tests: a folder's train/ and test/ images listed as a csv source's two CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def csv_splits(root: Path, extra_train_rows: Sequence[str] = ()) -> dict[str, Any]:
    """Write <root>/{train,test}.csv (``path,label`` rows of <root>/<split>/<class>/*.png, plus
    ``extra_train_rows``) and return the csv source's dataset block."""
    for split in ("train", "test"):
        rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted((root / split).rglob("*.png"))]
        rows += list(extra_train_rows) if split == "train" else []
        (root / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return {"source": "csv", "train": str(root / "train.csv"), "test": str(root / "test.csv")}
