"""Shared helpers for the tests of heads that train on images (clip_lora, maple): the shapes images as
ImageSets, and their preprocessed pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewclip.data.images import read_image
from fewclip.heads import ImageSet
from fewclip.saliency import patch_saliency, saliency_terms


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

    return {
        "classes": [c.replace("_", " ") for c in classes],
        "val": images("train", slice(0, 2)),
        "train": images("train", slice(2, None)),
        "test": images("test", slice(None)),
    }


def pixels_of(backbone: Any, images: ImageSet) -> torch.Tensor:
    return torch.from_numpy(np.stack([backbone.transform(read_image(p)) for p in images.paths]))


def assert_same_map_terms(backbone: Any, head: Any, frozen: Any, pixels: torch.Tensor) -> None:
    """The head's map is built from the frozen model's gradient and activations: compared before the ReLU and
    the max-normalisation, which amplify rounding (on the tiny CLIP a cell's evidence is a sum of terms that
    nearly cancel, so BLAS's summation order alone can move a normalised cell by 0.15 on another CPU); the
    normalised maps are compared where a cell's evidence is clear of that cancellation."""
    gradient, activations, _ = saliency_terms(backbone, head, pixels)
    frozen_gradient, frozen_activations, _ = saliency_terms(backbone, frozen, pixels)
    torch.testing.assert_close(
        activations, frozen_activations, atol=1e-5 * float(frozen_activations.abs().max()), rtol=1e-4
    )
    torch.testing.assert_close(gradient, frozen_gradient, atol=1e-5 * float(frozen_gradient.abs().max()), rtol=1e-4)
    terms = frozen_gradient * frozen_activations
    clear = (terms.sum(-1).abs() > 1e-2 * terms.abs().sum(-1)).numpy()
    maps, frozen_maps = patch_saliency(backbone, head, pixels)[0], patch_saliency(backbone, frozen, pixels)[0]
    assert clear.mean() > 0.5, clear.mean()  # most cells are compared
    np.testing.assert_allclose(maps[clear], frozen_maps[clear], atol=1e-4, rtol=0)
