"""A local image folder: one subfolder per class, optionally under ``train/`` and ``test/``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from .base import SourceConfig, SourceItem, Split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class FolderSourceConfig(SourceConfig):
    source: Literal["folder"] = "folder"
    path: str = Field(description="Root folder: <path>/<class>/* or <path>/{train,test}/<class>/*.")
    train_dir: str = Field("train", description="Subfolder holding the train split, if present.")
    test_dir: str = Field("test", description="Subfolder holding the test split, if present.")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each class held out for test when there are no split subfolders."
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def in_test_share(key: str, fraction: float) -> bool:
    """Machine-independent hold-out rule: hash of a relative path, not a RNG or a listing order."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class FolderSource:
    def __init__(self, config: FolderSourceConfig) -> None:
        self.config = config
        self.root = Path(config.path).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset.path: folder {self.root} does not exist")
        train, test = self.root / config.train_dir, self.root / config.test_dir
        self.has_splits = train.is_dir() and test.is_dir()

    def _class_dir(self, split: Split, name: str) -> Path:
        if not self.has_splits:
            return self.root / name
        return self.root / (self.config.train_dir if split == "train" else self.config.test_dir) / name

    def class_names(self) -> list[str]:
        base = self.root / self.config.train_dir if self.has_splits else self.root
        names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise ValueError(f"dataset.path: {base} has no class subfolders (expected <class>/<image>)")
        return names

    def items(self, split: Split, classes: list[str]) -> Iterator[SourceItem]:
        for name in classes:
            folder = self._class_dir(split, name)
            if not folder.is_dir():
                continue  # reported as an empty class by the prepare stage
            for path in sorted(p for p in folder.rglob("*") if _is_image(p)):
                if not self.has_splits:
                    held_out = in_test_share(path.relative_to(self.root).as_posix(), self.config.test_fraction)
                    if held_out != (split == "test"):
                        continue
                yield SourceItem(class_name=name, origin=str(path), path=path)
