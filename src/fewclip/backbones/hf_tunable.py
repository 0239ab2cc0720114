"""A trainable copy of a Hugging Face ``CLIPModel``'s towers (``TunableTowers``): what clip_lora wraps.

The copy is the library's own model, so LoRA is injected into it by module name (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj`` of every layer of both towers) and a saved adapter's tensors keep transformers'
parameter names (``text_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight``); CLIP-SVD replaces
the blocks' linear layers it names (``block_linears``: each projection and MLP layer is its own ``nn.Linear``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from fewclip.backbones.hf_saliency import vision_saliency_pass
from fewclip.backbones.protocol import BlockLinear

if TYPE_CHECKING:  # for annotations only: importing transformers' CLIP modules takes a while
    from transformers.models.clip.modeling_clip import CLIPModel

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIPAttention's nn.Linear layers
# each kind of a block's nn.Linear (protocol.BlockLinear) and its name inside a CLIPEncoderLayer
LAYER_LINEARS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "out": "self_attn.out_proj",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}


class HFTunableTowers:
    """A deep copy of ``clip_model`` with its tokenizer; the frozen original is never modified."""

    lora_targets: tuple[str, ...] = ATTENTION_PROJECTIONS

    def __init__(self, clip_model: CLIPModel, tokenizer: Any, device: torch.device) -> None:
        # the CLIPModel copy, reached dynamically: TunableTowers.module is any nn.Module (lora_towers sets it
        # to what peft's inject_adapter_in_model returns)
        self.module: Any = copy.deepcopy(clip_model)
        self.tokenizer, self.device = tokenizer, device

    def save_pretrained(self, folder: Path) -> None:
        """A transformers ``CLIPModel`` folder (safetensors weights, config, tokenizer): ``CLIPModel.from_pretrained``
        and ``CLIPTokenizer.from_pretrained`` load it."""
        self.module.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

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

    def block_linears(self) -> list[BlockLinear]:
        config = self.module.config
        layers = {"text": config.text_config.num_hidden_layers, "vision": config.vision_config.num_hidden_layers}
        return [
            BlockLinear(tower, index, kind, f"{tower}_model.encoder.layers.{index}.{path}")
            for tower, count in layers.items()
            for index in range(count)
            for kind, path in LAYER_LINEARS.items()
        ]
