"""encode_images takes what ``transform`` gives (numpy, stacked) as well as a tensor, with equal results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewclip.backbones import ModelConfig, load_backbone


def test_numpy_pixels_encode_exactly_as_the_same_tensor(tiny_clip: Path) -> None:
    backbone = load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    pixels = np.stack([backbone.transform(image) for image in images])
    from_numpy = backbone.encode_images(pixels)
    from_tensor = backbone.encode_images(torch.from_numpy(pixels))
    assert from_numpy.shape == (3, backbone.dim) and torch.equal(from_numpy, from_tensor)
