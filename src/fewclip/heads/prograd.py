"""ProGrad (Zhu et al., ICCV 2023, "Prompt-aligned Gradient for Prompt Tuning"): CoOp whose cross-entropy
gradient is projected when it conflicts with the gradient of the KL toward zero-shot predictions.

Per step: g_ce = d CE / d ctx, g_kl = d KL(p_zs || p) / d ctx (soft cross-entropy with the zero-shot
probabilities at temperature T, times T^2). If cos(g_ce, g_kl) < 0 the update uses
``g_ce - lambda * (g_ce . g_kl_unit) g_kl_unit``, else g_ce unchanged (BeierZhu/Prompt-align
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` ``prograd_backward_and_update``; ``ProGradLoss`` in
``trainers/prograd.py``). Defaults: ``configs/trainers/ProGrad/rn50_ep50.yaml`` and ``scripts/prograd.sh``
(SGD lr 0.002, 50 epochs, batch 32, LAMBDA 1, T 1), i.e. CoOp's; the zero-shot teacher uses the configured
templates (the reference: one dataset-specific template).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from pydantic import Field
from torch import nn

from .base import Task, normalize
from .coop import ContextParams, CoOpConfig, CoOpHead, CoOpPrompts
from .zero_shot import ZeroShotHead


class ProGradConfig(CoOpConfig):
    """The `prograd` block: CoOp's keys plus the projection strength and the KL temperature."""

    projection: float = Field(1.0, ge=0, description="lambda: how much of the conflicting component is removed.")
    temperature: float = Field(1.0, gt=0, description="T of the KL toward the zero-shot predictions.")


def project_conflict(ce_grad: torch.Tensor, kl_grad: torch.Tensor, strength: float) -> torch.Tensor:
    """ce_grad, minus ``strength`` times its component along kl_grad when the two point apart (cos < 0)."""
    kl_unit = kl_grad / torch.linalg.norm(kl_grad)
    ce_unit = ce_grad / torch.linalg.norm(ce_grad)
    if torch.dot(ce_unit.flatten(), kl_unit.flatten()) < 0:
        return ce_grad - strength * torch.dot(ce_grad.flatten(), kl_unit.flatten()) * kl_unit
    return ce_grad


class ProGradHead(CoOpHead):
    name: ClassVar[str] = "prograd"
    paper: ClassVar[str | None] = "Zhu et al., ICCV 2023 (ProGrad)"
    official_code: ClassVar[str | None] = "BeierZhu/Prompt-align"
    config_key: ClassVar[str | None] = "prograd"
    Config = ProGradConfig

    def __init__(self, config: ProGradConfig | None = None) -> None:
        self.config = config or ProGradConfig()

    def train_step(self, task: Task, prompts: CoOpPrompts, params: ContextParams,
                   scale: float) -> Callable[[torch.Tensor, torch.Tensor], float]:
        teacher = ZeroShotHead().fit(Task(list(task.class_names), list(task.templates), task.backbone))
        t, strength = self.config.temperature, self.config.projection

        def step(features: torch.Tensor, labels: torch.Tensor) -> float:
            logits = (scale * normalize(features) @ prompts.features(params.ctx).T).float()
            teacher_prob = torch.softmax(teacher.logits(features) / t, dim=-1)
            kl = (-teacher_prob * torch.log_softmax(logits / t, dim=-1) * t * t).sum(dim=1).mean()
            ce = nn.functional.cross_entropy(logits, labels)
            (kl_grad,) = torch.autograd.grad(kl, params.ctx, retain_graph=True)
            (ce_grad,) = torch.autograd.grad(ce, params.ctx)
            params.ctx.grad = project_conflict(ce_grad, kl_grad, strength)
            return ce.item()

        return step
