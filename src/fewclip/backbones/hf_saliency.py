"""Where saliency reads a Hugging Face ``CLIPModel``: the patch tokens its last vision layer attends over,
for the frozen backbone, a tuned copy (clip_lora) and the prompted towers (MaPLe) alike."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

import torch

from fewclip.backbones.prompt_tower import hf_encoder_layers

if TYPE_CHECKING:  # for annotations only: importing transformers' CLIP modules takes a while
    from transformers.models.clip.modeling_clip import CLIPModel, CLIPVisionModel


@contextlib.contextmanager
def last_layer_patches(model: CLIPModel, trailing: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """While active, the patch tokens that an HF ``CLIPModel``'s last vision layer *normalises* for its
    attention (``layer_norm1``'s output) are captured as a (n, g, g, width) view on the forward graph, in
    the yielded dict under ``"patches"``. ``trailing``: tokens after the patches left out (MaPLe's prompts).

    Why the normalised tokens: the image feature is read from the CLS token, which reads the patches only
    through this LayerNorm, and a LayerNorm ignores its input's scale, so the gradient at its *input* is
    orthogonal to that input token by token (up to its eps): gradient x activation there sums to rounding
    noise. At its output the product is the evidence Grad-CAM for ViTs reads (pytorch-grad-cam's ViT
    recipe takes the last block's ``norm1`` for the same reason).
    """
    captured: dict[str, torch.Tensor] = {}

    def route(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
        end = output.shape[1] - trailing
        grid = int(round((end - 1) ** 0.5))
        patches = output[:, 1:end].reshape(len(output), grid, grid, -1)  # the layer reads the patches through this view
        if patches.requires_grad:
            patches.retain_grad()  # .backward() callers read patches.grad
        captured["patches"] = patches
        return torch.cat([output[:, :1], patches.flatten(1, 2), output[:, end:]], dim=1)

    vision: CLIPVisionModel = model.vision_model  # transformers builds it untyped (_from_config)
    handle = hf_encoder_layers(vision.encoder)[-1].layer_norm1.register_forward_hook(route)
    try:
        yield captured
    finally:
        handle.remove()


def vision_saliency_pass(
    model: CLIPModel, pixels: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """An HF ``CLIPModel``'s (n, d) image features (float32, on ``device``) and the normalised patch tokens its
    vision tower's last layer attends over, (n, g, g, width), on one autograd graph (``last_layer_patches``).
    Serves the frozen backbone and a head's tuned copy of the model alike (clip_lora)."""
    with last_layer_patches(model) as captured:
        features = model.get_image_features(pixel_values=pixels.to(device)).pooler_output.float()
    return features, captured["patches"]
