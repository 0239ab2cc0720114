"""A local image folder: one subfolder per class, optionally under ``train/`` and ``test/``."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import ClassVar, Iterator, Literal

from pydantic import Field

from fewclip.data.sources.base import TEST_ONLY, SourceConfig, SourceItem, Split, TestShare, missing_path_message
from fewclip.data.sources.registry import register_source

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class FolderSourceConfig(SourceConfig):
    source: Literal["folder"] = "folder"
    path_keys: ClassVar[dict[str, str]] = {"path": "folder"}
    path: str = Field(
        description="Root folder: <path>/<class>/*, or <path>/{train,test}/<class>/* "
        "(or {train,val}: val/ is then the test split; with test/ present, val/ is "
        "ignored), or <path>/test/<class>/* alone: a test-only set for shot-free methods "
        "(zero_shot)."
    )
    train_dir: str = Field("train", description="Subfolder holding the train split, if present.")
    test_dir: str = Field("test", description="Subfolder holding the test split, if present.")
    test_fraction: TestShare = Field(
        0.2, description=f"Share of each class held out for test when there are no split subfolders ({TEST_ONLY})."
    )

    def default_label(self) -> str:
        return Path(self.path).expanduser().name or "folder"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def in_test_share(key: str, fraction: float) -> bool:
    """Machine-independent hold-out rule: hash of a relative path, not a RNG or a listing order."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


VAL_DIR = "val"  # the test split when the root holds train/ and val/ but no test/


def split_dirs(root: Path, train_dir: str, test_dir: str, key: str = "dataset") -> tuple[str | None, str] | None:
    """(train, test) subfolder names when ``root`` uses the split layout (train None: a test-only set), None
    for <root>/<class>/*.

    ``train/`` + ``test/`` is the split layout; so is ``train/`` + ``val/`` (val/ is then the test split:
    fewclip draws its own validation images from train). ``test/`` (or ``val/``) alone is a test-only set.
    ``train/`` alone, or ``test/`` beside class folders, is ambiguous: an error. ``key``: the dataset block's
    place in the config, for messages (``dataset``, ``dataset.eval_on[0]``).
    """
    if not (root / train_dir).is_dir():
        return test_only_dir(root, train_dir, test_dir, key)
    check_distinct_splits(root, train_dir, test_dir, key)
    if (root / test_dir).is_dir():
        return train_dir, test_dir
    if (root / VAL_DIR).is_dir():
        log.info(
            "%s.path: %s has %s/ and %s/ but no %s/: using %s/ as the test split",
            key,
            root,
            train_dir,
            VAL_DIR,
            test_dir,
            VAL_DIR,
        )
        return train_dir, VAL_DIR
    raise ValueError(
        f"{key}.path: {root} has a {train_dir}/ folder but no {test_dir}/ or {VAL_DIR}/ beside it, so "
        f"{train_dir!r} would become a class; add {root / test_dir}/<class>/ images, or point {key}.path "
        f"at {root / train_dir} to hold out test_fraction of each class"
    )


def check_distinct_splits(root: Path, train_dir: str, test_dir: str, key: str = "dataset") -> None:
    """Refuse a train folder that is the test folder, holds it, or lies in it: its few-shot sets would be test
    images (or test/ would be read as a class)."""
    train, test = (root / train_dir).resolve(), (root / test_dir).resolve()
    if train == test or train in test.parents or test in train.parents:
        relation = "is" if train == test else ("holds" if train in test.parents else "lies inside")
        raise ValueError(
            f"{key}.train_dir {train_dir!r} ({train}) {relation} the test folder, {key}.test_dir {test_dir!r} "
            f"({test}): the few-shot sets would be drawn from test images and every score would be inflated. "
            f"Give train and test two distinct folders side by side (e.g. {root}/train/<class>/ and "
            f"{root}/test/<class>/), or point {key}.path at one folder of classes to hold out test_fraction"
        )


def test_only_dir(root: Path, train_dir: str, test_dir: str, key: str = "dataset") -> tuple[None, str] | None:
    """(None, test subfolder) when ``root`` holds only a test/ (or val/) folder of classes; None when it holds
    neither (<root>/<class>/*). A test/ beside other folders is an error: it would become a class."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    present = [name for name in (test_dir, VAL_DIR) if name in folders]
    if not present:
        return None
    others = [name for name in folders if name != present[0]]
    if others:
        raise ValueError(
            f"{key}.path: {root} has a {present[0]}/ folder but no {train_dir}/, beside the folders {others}, so "
            f"{present[0]!r} would become a class. Lay the images out as {root}/{{{train_dir},{test_dir}}}/<class>/, "
            f"or as {root}/<class>/ without a {present[0]}/ folder (if {present[0]!r} really is a class, set "
            f"{key}.test_dir to a name that is not a folder of {root})"
        )
    log.info(
        "%s.path: %s holds only %s/: a test-only set (no train images; shot-free methods such as "
        "zero_shot evaluate all of it)",
        key,
        root,
        present[0],
    )
    return None, present[0]


@register_source
class FolderSource:
    Config = FolderSourceConfig

    def __init__(self, config: FolderSourceConfig) -> None:
        self.config = config
        self.root = Path(config.path).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(missing_path_message(config, "path", "folder"))
        self.splits = split_dirs(self.root, config.train_dir, config.test_dir, config.key)
        self.has_splits = self.splits is not None

    def _class_dir(self, split: Split, name: str) -> Path | None:
        if self.splits is None:
            return self.root / name
        folder = self.splits[0] if split == "train" else self.splits[1]
        return None if folder is None else self.root / folder / name

    def class_names(self, split: Split = "train") -> list[str]:
        # a test-only set's classes are its test folder's, whichever split is asked
        if self.splits is None:
            base = self.root
        else:
            base = self.root / ((split == "train" and self.splits[0]) or self.splits[1])
        names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise ValueError(f"{self.config.key}.path: {base} has no class subfolders (expected <class>/<image>)")
        return names

    def items(self, split: Split, classes: list[str]) -> Iterator[SourceItem]:
        for name in classes:
            folder = self._class_dir(split, name)
            if folder is None or not folder.is_dir():  # a test-only set has no train folder
                continue  # reported as an empty class by the prepare stage
            for path in sorted(p for p in folder.rglob("*") if _is_image(p)):
                if not self.has_splits:
                    held_out = in_test_share(path.relative_to(self.root).as_posix(), self.config.test_fraction)
                    if held_out != (split == "test"):
                        continue
                yield SourceItem(class_name=name, origin=str(path), path=path)
