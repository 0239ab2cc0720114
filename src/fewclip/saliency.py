"""Saliency on any backbone: gradient-weighted spatial activations (element-wise Grad-CAM).

For a class score S (the head's logit) and the activations A (gh, gw, c) the backbone's
``saliency_pass`` exposes (or, for a head that tunes the encoders, its own ``image_saliency_pass`` through
its tuned image tower) (a ViT's patch tokens entering its last layer, a ResNet's last convolutional
stage before attention pooling): saliency_xy = ReLU(sum_c dS/dA_xyc * A_xyc), upsampled to the image.
Weighting each location by its own gradient (not the gradient averaged over the map, as classic
Grad-CAM does) keeps the map faithful to where the evidence is (HiResCAM).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fewclip.backbones.protocol import Backbone
from fewclip.heads.base import differentiable_logits


def saliency_terms(
    backbone: Backbone, head: Any, pixels: torch.Tensor, target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pixels (n, 3, H, W) -> (dS/dA (n, gh, gw, c), A (n, gh, gw, c), logits (n, C)) for the ``target``
    classes' scores S (default: the predicted ones): what a map is made of, before ReLU and normalisation
    (where float rounding is amplified: compare these, not maps, across code paths)."""
    with torch.enable_grad():
        # the frozen model has no trainable weights: gradients need an input that asks for them
        inputs = pixels.detach().to(backbone.device, copy=True).requires_grad_(True)
        if head.tunes_encoders:
            logits, activations = head.image_saliency_pass(inputs)
        else:
            features, activations = backbone.saliency_pass(inputs)
            logits = differentiable_logits(head, features)
        if target is None:
            target = logits.argmax(-1)
        # autograd.grad, not backward: a tuned head's trainable weights keep no .grad from a saliency map
        (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None].to(logits.device)).sum(), activations)
    return gradient.detach().float().cpu(), activations.detach().float().cpu(), logits.detach().float().cpu()


def patch_saliency(
    backbone: Backbone, head: Any, pixels: torch.Tensor, target: torch.Tensor | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """pixels (n, 3, H, W) -> ((n, gh, gw) saliency in [0, 1], (n, C) logits), for the ``target``
    classes (default: the predicted ones)."""
    gradient, activations, logits = saliency_terms(backbone, head, pixels, target)
    maps = (gradient * activations).sum(-1).clamp_min(0).numpy()  # (n, gh, gw)
    peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0), logits


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image + (g, g) saliency -> (H, W, 3) uint8 with a red-yellow heat map."""
    from PIL import Image

    heat = (
        np.asarray(
            Image.fromarray((saliency * 255).astype(np.uint8)).resize(image.shape[1::-1], Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        / 255
    )
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], -1) * 255
    mix = image.astype(np.float32) * (1 - alpha * heat[..., None]) + colour * alpha * heat[..., None]
    return np.clip(mix, 0, 255).astype(np.uint8)
