"""Saliency (gradient-weighted patch tokens) points at the object, on the world CLIP."""

from __future__ import annotations

import numpy as np
import torch

from fewclip.backbones import ModelConfig, load_backbone
from fewclip.heads import Task, ZeroShotHead
from fewclip.saliency import overlay, patch_saliency, saliency_terms
from fewclip.world import CHECKPOINT
from fewclip.world.render import image_rng, render

NAMES = ["red cross", "blue circle", "green diamond", "orange star", "purple cross", "yellow circle"]


def test_saliency_is_higher_on_the_shape_than_on_the_background() -> None:
    backbone = load_backbone(ModelConfig(id=str(CHECKPOINT)))
    head = ZeroShotHead().fit(Task(NAMES, ["a photo of a {}."], backbone))
    on_shape, off_shape = [], []
    for index, name in enumerate(NAMES):
        image, _ = render(name, image_rng(5, "sketch", "test", name, index), 64, "sketch")
        maps, logits = patch_saliency(backbone, head, torch.from_numpy(backbone.transform(image))[None])
        assert maps.shape == (1, 8, 8) and maps.max() == 1.0 and maps.min() >= 0  # normalised, not all zero
        pixels = np.asarray(image).astype(float)
        # outline pixels are saturated colour on pale paper: the patches where a quarter of pixels are
        shape_patches = ((pixels.max(2) - pixels.min(2)) > 90).reshape(8, 8, 8, 8).mean((1, 3)) > 0.25
        on_shape.append(maps[0][shape_patches].mean())
        off_shape.append(maps[0][~shape_patches].mean())
        frozen = head.logits(backbone.encode_images(torch.from_numpy(backbone.transform(image))[None]))
        torch.testing.assert_close(logits, frozen, atol=1e-5 * float(frozen.abs().max()), rtol=1e-5)  # two graphs
    assert sum(a > b for a, b in zip(on_shape, off_shape)) >= 5
    assert np.mean(on_shape) > 2 * np.mean(off_shape)  # measured 2.6x on these six images


def test_overlay_keeps_the_image_where_saliency_is_zero() -> None:
    image = np.full((16, 16, 3), 100, np.uint8)
    saliency = np.zeros((4, 4))
    saliency[0, 0] = 1.0
    mixed = overlay(image, saliency)
    assert np.array_equal(mixed[12:, 12:], image[12:, 12:])
    assert not np.array_equal(mixed[:2, :2], image[:2, :2])


def test_the_evidence_is_not_rounding_noise() -> None:
    """Gradient x activation is read where a ViT's last layer has normalised its patch tokens: at the
    LayerNorm's input, scale invariance makes the product sum to ~1e-7 of its terms (it did, and the maps
    were rounding noise that moved with the BLAS kernel)."""
    backbone = load_backbone(ModelConfig(id=str(CHECKPOINT)))
    head = ZeroShotHead().fit(Task(NAMES, ["a photo of a {}."], backbone))
    images = [render(name, image_rng(5, "sketch", "test", name, 0), 64, "sketch")[0] for name in NAMES]
    gradient, activations, _ = saliency_terms(
        backbone, head, torch.from_numpy(np.stack([backbone.transform(i) for i in images]))
    )
    terms = gradient * activations  # (n, g, g, width)
    share = terms.sum(-1).abs() / terms.abs().sum(-1)  # how much of a cell's evidence survives cancellation
    assert float(share.median()) > 1e-2, float(share.median())  # measured 0.07 (0.0000003 before)
