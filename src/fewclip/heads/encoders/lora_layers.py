"""A copy of the backbone's HF ``CLIPModel`` with LoRA (``peft``) in its attention projections.

The backbone's own model is never modified: the copy carries the adapters, so other heads of the same
run keep scoring with the frozen towers. Only parameters whose name contains ``lora_`` train.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import nn

from fewclip.heads.base import normalize


def lora_scaling(rank: int, alpha: float) -> float:
    """The factor on every LoRA update B A x: alpha / sqrt(rank), as CLIP-LoRA's ``loralib/layers.py`` scales it
    (``LoRALayer.__init__``; peft's own default, alpha / rank, is what fewclip used before it followed the code)."""
    return alpha / math.sqrt(rank)


def is_lora(name: str) -> bool:
    return "lora_" in name


def lora_clip(backbone: Any, rank: int, alpha: float, dropout: float, targets: Sequence[str], seed: int) -> nn.Module:
    """The backbone's CLIPModel, copied, with LoRA on ``targets`` of every layer of both towers.

    LoRA A is drawn (peft's Kaiming init) from a torch generator seeded by ``seed``; B starts at zero, so the
    tuned model starts as the frozen one. A layer adds ``(B A) * alpha / sqrt(rank)`` times its (dropped-out,
    while training) input, as CLIP-LoRA's ``loralib/layers.py`` ``LinearLoRA`` does."""
    from peft import LoraConfig, inject_adapter_in_model

    tuned = copy.deepcopy(backbone.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # use_rslora: alpha / sqrt(rank), CLIP-LoRA's LoRALayer scaling (peft's default is alpha / rank)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                            use_rslora=True)
        tuned = inject_adapter_in_model(config, tuned)
    for name, param in tuned.named_parameters():
        param.requires_grad_(is_lora(name))
    return tuned.to(backbone.device)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights only (what a saved clip_lora head holds), copied to the CPU."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if is_lora(name)}


def load_adapter(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved LoRA weights into a model built by ``lora_clip`` with the same settings."""
    expected = set(adapter_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"clip_lora: saved adapter weights do not fit this model (missing {missing}, unexpected "
                         f"{extra}); the run's model or the clip_lora block changed: retrain with `fewclip train`")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name].to(param.device, param.dtype))


def class_text_features(model: nn.Module, tokenizer: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """(C, d) normalised text features of the class prompts through ``model``'s (tuned) text tower."""
    tokens = tokenizer(list(prompts), padding=True, return_tensors="pt").to(device)
    return normalize(model.get_text_features(**tokens).pooler_output.float())


def image_features(model: nn.Module, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(n, d) normalised image features of preprocessed pixels through ``model``'s (tuned) vision tower."""
    return normalize(model.get_image_features(pixel_values=pixels.to(device)).pooler_output.float())
