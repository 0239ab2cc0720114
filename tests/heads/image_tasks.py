"""Shared helpers for the tests of heads that train on images (clip_lora, maple): the shapes images as
ImageSets, and their preprocessed pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewclip.data.images import read_image
from fewclip.heads import ImageSet


def shapes_sets(shapes_dir: Path) -> dict[str, Any]:
    """Class names, and val (2 a class) / train (the rest) / test ImageSets of the shapes dataset."""
    classes = sorted(p.name for p in (shapes_dir / "train").iterdir())

    def images(split: str, pick: slice) -> ImageSet:
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted((shapes_dir / split / name).glob("*.png"))[pick]
            paths += files
            labels += [label] * len(files)
        return ImageSet(paths, torch.tensor(labels))

    return {"classes": [c.replace("_", " ") for c in classes], "val": images("train", slice(0, 2)),
            "train": images("train", slice(2, None)), "test": images("test", slice(None))}


def pixels_of(backbone: Any, images: ImageSet) -> torch.Tensor:
    return torch.from_numpy(np.stack([backbone.transform(read_image(p)) for p in images.paths]))
