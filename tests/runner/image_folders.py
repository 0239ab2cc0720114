"""Folders of the user's JPEGs in each layout ``fewclip run FOLDER`` takes, drawn by ``fewclip.world.toy``: tiny
images, a few per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewclip.world.toy import draw_shape

# layout -> the folders of each split under the root ("": the class folders are the root's own)
LAYOUTS = {
    "classes": {"all": ""},
    "train_test": {"train": "train", "test": "test"},
    "train_val": {"train": "train", "test": "val"},
}


def jpeg_folder(root: Path, layout: str, train: dict[str, int], test: int = 3) -> Path:
    """``root`` laid out as ``layout`` with ``train[name]`` train images of each class and ``test`` test images
    (a folder of class folders gets both in one: prepare holds out its test share by a hash of the file name)."""
    for split, folder in LAYOUTS[layout].items():
        for index, (name, count) in enumerate(train.items()):
            target = root / folder / name
            target.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([index, len(split)])
            total = {"all": count + test, "train": count, "test": test}[split]
            for i in range(total):
                draw_shape(name, rng, size=24).save(target / f"{split}-{i:03d}.jpg", quality=90)
    return root
