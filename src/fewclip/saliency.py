"""Saliency for ViT CLIP: gradient-weighted patch-token activations (Grad-CAM on tokens).

For a class score S (the head's logit) and the patch tokens A (P, width) *entering* the vision tower's
last encoder layer: saliency_p = ReLU(sum_d dS/dA_pd * A_pd). The CLS token is skipped; the P values
form the patch grid, upsampled to the image. This is the token analogue of Grad-CAM and suits ViTs:
the image feature is read from the CLS token alone, so the last layer's *output* patch tokens get no
gradient, while its input tokens are exactly what the final CLS attention reads the evidence from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def patch_saliency(backbone: Any, head: Any, pixels: torch.Tensor,
                   target: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """pixels (n, 3, H, W) -> ((n, grid, grid) saliency in [0, 1], (n, C) logits), for the ``target``
    classes (default: the predicted ones)."""
    model = backbone.model
    captured: dict[str, torch.Tensor] = {}
    last_layer = model.vision_model.encoder.layers[-1]

    def keep(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden.retain_grad()
        captured["tokens"] = hidden

    handle = last_layer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.enable_grad():
            # the frozen model has no trainable weights: gradients need an input that asks for them
            inputs = pixels.detach().to(backbone.device, copy=True).requires_grad_(True)
            features = model.get_image_features(pixel_values=inputs).pooler_output.float().cpu()
            logits = getattr(head, "differentiable_logits", head.logits)(features)
            if target is None:
                target = logits.argmax(-1)
            logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    tokens = captured["tokens"]
    weights = (tokens.grad * tokens).sum(-1)[:, 1:].clamp_min(0)  # (n, P) without CLS
    grid = int(round(weights.shape[1] ** 0.5))
    maps = weights.detach().float().cpu().reshape(-1, grid, grid).numpy()
    peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0), logits.detach()


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image + (g, g) saliency -> (H, W, 3) uint8 with a red-yellow heat map."""
    from PIL import Image

    heat = np.asarray(Image.fromarray((saliency * 255).astype(np.uint8)).resize(image.shape[1::-1], Image.Resampling.BILINEAR),
                      dtype=np.float32) / 255
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], -1) * 255
    mix = image.astype(np.float32) * (1 - alpha * heat[..., None]) + colour * alpha * heat[..., None]
    return np.clip(mix, 0, 255).astype(np.uint8)
