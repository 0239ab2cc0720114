"""The backbone's towers, copied (``Backbone.tunable_towers``), with LoRA (``peft``) in their attention projections.

The backbone's own model is never modified: the copy carries the adapters, so other heads of the same
run keep scoring with the frozen towers. Only parameters whose name contains ``lora_`` train.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from fewclip.backbones.protocol import Backbone, TunableTowers
from fewclip.heads.encoders.tuned_towers import folded_copy, load_trained


def lora_scaling(rank: int, alpha: float) -> float:
    """The factor on every LoRA update B A x: alpha / sqrt(rank), as CLIP-LoRA's ``loralib/layers.py`` scales it
    (``LoRALayer.__init__``; peft's own default, alpha / rank, is what fewclip used before it followed the code)."""
    return alpha / math.sqrt(rank)


def is_lora(name: str) -> bool:
    return "lora_" in name


def lora_towers(
    backbone: Backbone, rank: int, alpha: float, dropout: float, targets: Sequence[str], seed: int
) -> TunableTowers:
    """The backbone's towers, copied, with LoRA on ``targets`` of every layer of both towers.

    LoRA A is drawn (peft's Kaiming init) from a torch generator seeded by ``seed``; B starts at zero, so the
    tuned model starts as the frozen one. A layer adds ``(B A) * alpha / sqrt(rank)`` times its (dropped-out,
    while training) input, as CLIP-LoRA's ``loralib/layers.py`` ``LinearLoRA`` does."""
    from peft import LoraConfig, inject_adapter_in_model  # on use: importing peft takes seconds

    towers = backbone.tunable_towers()
    unknown = [name for name in targets if name not in towers.lora_targets]
    if unknown:
        raise ValueError(
            f"clip_lora.targets: {unknown} are not attention projections of this {backbone.config.library} "
            f"backbone; choose among {list(towers.lora_targets)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # use_rslora: alpha / sqrt(rank), CLIP-LoRA's LoRALayer scaling (peft's default is alpha / rank);
        # peft annotates lora_alpha as int but scales by it as a number, and CLIP-LoRA's alpha may be fractional
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,  # type: ignore[arg-type]
            lora_dropout=dropout,
            target_modules=list(targets),
            use_rslora=True,
        )
        towers.module = inject_adapter_in_model(config, towers.module)
    for name, param in towers.module.named_parameters():
        param.requires_grad_(is_lora(name))
    towers.module.to(backbone.device)
    return towers


def merged_towers(towers: TunableTowers) -> TunableTowers:
    """A copy of ``towers`` whose module has every LoRA update folded into its base layer (peft's ``merge``, W +
    (B A) * scaling) and the peft layers replaced by those base layers: the library's plain model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # on use: importing peft takes seconds

    def merged(layer: Any) -> nn.Module:
        layer.merge()
        base: nn.Module = layer.get_base_layer()
        return base

    return folded_copy(towers, BaseTunerLayer, merged)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights only (what a saved clip_lora head holds), copied to the CPU."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if is_lora(name)}


def load_adapter(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved LoRA weights into the module of towers built by ``lora_towers`` with the same settings."""
    load_trained(model, state, "clip_lora")
