"""The split files of a caption run: COCO-format captions of train / val / test, each image with its sha1.

``prepare`` writes them once per data config (``prepare_key``); every later stage reads them back, so
all stages see the same images, references and paths. Image paths inside the run directory are stored
relative to it (the run can move); others absolutely.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol, Sequence

from fewclip.fileio import read_json
from fewclip.caption.data import CaptionData, CaptionDataConfig, CaptionItem

SPLITS = ("train", "val", "test")


class SplitFiles(Protocol):
    """Where a run keeps its split files (``fewclip.runner.layout.CaptionLayout``)."""

    @property
    def root(self) -> Path: ...

    def split_file(self, split: str) -> Path: ...


def prepare_key(data: CaptionDataConfig) -> str:
    """What the split files depend on: the data block, and the bytes of a caption file it names."""
    payload: dict[str, Any] = {"data": data.model_dump(mode="json")}
    if data.source in ("coco", "csv") and data.captions and Path(data.captions).expanduser().is_file():
        payload["captions_sha1"] = hashlib.sha1(Path(data.captions).expanduser().read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stored_path(path: Path, root: Path) -> str:
    """An image path as the run's files record it: relative to the run directory when inside it (the run
    can move), else absolute. ``root / stored`` gives the file back in both cases."""
    resolved, base = path.expanduser().resolve(), root.expanduser().resolve()
    return resolved.relative_to(base).as_posix() if base in resolved.parents else str(resolved)


def split_json(items: Sequence[CaptionItem], split: str, key: str, root: Path) -> dict[str, Any]:
    """One split in COCO caption format; each image also carries its ``sha1`` (the caches' key)."""
    images = [{"id": item.image_id, "file_name": stored_path(item.path, root), "sha1": item.sha1} for item in items]
    annotations = [{"image_id": item.image_id, "caption": caption} for item in items for caption in item.captions]
    annotations = [{"id": index, **annotation} for index, annotation in enumerate(annotations)]
    return {
        "info": {"description": f"fewclip caption split {split}", "prepare_key": key},
        "images": images,
        "annotations": annotations,
    }


def read_split(layout: SplitFiles, split: str) -> list[CaptionItem]:
    data = read_json(layout.split_file(split))
    captions: dict[str, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(str(annotation["image_id"]), []).append(annotation["caption"])
    return [
        CaptionItem(
            str(image["id"]), layout.root / image["file_name"], tuple(captions[str(image["id"])]), image["sha1"]
        )
        for image in data["images"]
    ]


def read_splits(layout: SplitFiles) -> CaptionData:
    missing = [str(layout.split_file(s)) for s in SPLITS if not layout.split_file(s).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: run `fewclip caption prepare` first")
    return CaptionData(*(read_split(layout, s) for s in SPLITS), skipped=[])


def prepared_with(layout: SplitFiles, key: str) -> bool:
    files = [layout.split_file(s) for s in SPLITS]
    return all(f.is_file() and read_json(f).get("info", {}).get("prepare_key") == key for f in files)
