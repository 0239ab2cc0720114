"""A trainable copy of a Hugging Face ``CLIPModel``'s towers (``TunableTowers``): what clip_lora wraps.

The copy is the library's own model, so LoRA is injected into it by module name (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj`` of every layer of both towers) and a saved adapter's tensors keep transformers'
parameter names (``text_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Sequence

import torch

from fewclip.backbones.hf_saliency import vision_saliency_pass

if TYPE_CHECKING:  # for annotations only: importing transformers' CLIP modules takes a while
    from transformers.models.clip.modeling_clip import CLIPModel

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIPAttention's nn.Linear layers


class HFTunableTowers:
    """A deep copy of ``clip_model`` with its tokenizer; the frozen original is never modified."""

    lora_targets: tuple[str, ...] = ATTENTION_PROJECTIONS

    def __init__(self, clip_model: CLIPModel, tokenizer: Any, device: torch.device) -> None:
        # the CLIPModel copy, reached dynamically: TunableTowers.module is any nn.Module (lora_towers sets it
        # to what peft's inject_adapter_in_model returns)
        self.module: Any = copy.deepcopy(clip_model)
        self.tokenizer, self.device = tokenizer, device

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.module.get_image_features(pixel_values=pixels.to(self.device)).pooler_output
        return features.float()

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)
        features: torch.Tensor = self.module.get_text_features(**tokens).pooler_output
        return features.float()

    def saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vision_saliency_pass(self.module, pixels, self.device)

    def checkpoint_activations(self) -> None:
        self.module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
