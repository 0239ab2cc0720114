"""KgCoOp (Yao et al., CVPR 2023, "Visual-Language Prompt Tuning with Knowledge-guided Context
Optimization"): CoOp plus ``weight * mean_c ||w_c - w_c^clip||^2``, the squared distance between each
learned class text feature and the hand-crafted one (both L2-normalised), as the paper's Eq. 5 writes it.
(The released code, htyao89/KgCoOp ``trainers/kgcoop.py``, adds ``W * (1 - mean cos)``, which is half
of that for unit vectors.) Defaults from ``configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml`` and
``scripts/base2new_train.sh``: context initialised from "a photo of a" (4 tokens), 100 epochs, batch 128,
SGD lr 0.002, weight 8. The hand-crafted features are the zero-shot prototypes of the configured templates
(the reference uses one dataset-specific template).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from pydantic import Field
from torch import nn

from .base import Task, normalize
from .coop import ContextParams, CoOpConfig, CoOpHead, CoOpPrompts
from .zero_shot import ZeroShotHead


class KgCoOpConfig(CoOpConfig):
    """The `kgcoop` block: CoOp's keys with KgCoOp's defaults, plus the knowledge-guidance weight."""

    n_ctx: int = Field(4, ge=1, description="Learnable context tokens (ctx_init's token count when it is set).")
    ctx_init: str | None = Field("a photo of a", description="Words whose token embeddings initialise the context.")
    epochs: int | dict[int, int] = Field(100, description="Epochs, or {shots: epochs} per shot budget.")
    batch_size: int = Field(128, ge=1)
    weight: float = Field(8.0, ge=0, description="lambda: weight of the distance to the hand-crafted text features.")


class KgCoOpHead(CoOpHead):
    name: ClassVar[str] = "kgcoop"
    paper: ClassVar[str | None] = "Yao et al., CVPR 2023 (KgCoOp)"
    official_code: ClassVar[str | None] = "htyao89/KgCoOp"
    config_key: ClassVar[str | None] = "kgcoop"
    Config = KgCoOpConfig

    def __init__(self, config: KgCoOpConfig | None = None) -> None:
        self.config = config or KgCoOpConfig()

    def train_step(self, task: Task, prompts: CoOpPrompts, params: ContextParams,
                   scale: float) -> Callable[[torch.Tensor, torch.Tensor], float]:
        hand_crafted = ZeroShotHead().fit(Task(list(task.class_names), list(task.templates), task.backbone)).prototypes_
        weight = self.config.weight

        def step(features: torch.Tensor, labels: torch.Tensor) -> float:
            class_text = prompts.features(params.ctx)  # (C, d) normalised
            logits = scale * normalize(features) @ class_text.T
            guidance = (class_text - hand_crafted).pow(2).sum(dim=-1).mean()
            loss = nn.functional.cross_entropy(logits.float(), labels) + weight * guidance
            loss.backward()
            return loss.item()

        return step
