"""The optimiser and learning-rate schedule of an encoder-tuning head, built from its ``TrainPlan``.

``adamw`` (CLIP-LoRA's reference): AdamW, betas (0.9, 0.999), cosine from ``lr`` to ``min_lr`` over all
``iterations`` steps, stepped after every step.

``sgd`` (MaPLe's reference, Dassl's ``build_optimizer`` + ``build_lr_scheduler``): SGD with ``momentum`` and
``weight_decay``; the rate is set per *epoch* as Dassl steps its scheduler (once, after an epoch's last batch):
``warmup_epochs`` epochs at the constant ``warmup_lr``, then a cosine over all the epochs
(``heads.schedule.lr_at_epoch`` with ``"dassl"``). It is a ``LambdaLR`` stepped after every step whose rate
only changes where an epoch of ``steps_per_epoch`` steps ends, so the trainer's loop, checkpoints and resume
are the same for both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fewclip.training.schedule import lr_at_epoch


def epoch_rate_factor(step: int, plan: Any) -> float:  # plan: a TrainPlan (Any: images_loop imports this module)
    """The rate of step ``step`` (0-based) over ``plan.lr``: its epoch's Dassl rate."""
    epochs = -(-plan.iterations // plan.steps_per_epoch)
    rate = lr_at_epoch(step // plan.steps_per_epoch, epochs, plan.lr, plan.warmup_epochs, plan.warmup_lr, "dassl")
    factor: float = rate / plan.lr
    return factor


def build_optimizer(
    params: list[nn.Parameter], plan: Any
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(optimizer, scheduler) for ``plan.optimizer``; the scheduler is stepped after every optimiser step."""
    if plan.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=plan.lr, weight_decay=plan.weight_decay, betas=(0.9, 0.999)
        )
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, plan.iterations, eta_min=plan.min_lr)
    if plan.optimizer != "sgd":
        raise ValueError(f"TrainPlan.optimizer must be 'adamw' or 'sgd', got {plan.optimizer!r}")
    if plan.steps_per_epoch < 1:
        raise ValueError("TrainPlan.steps_per_epoch must be >= 1 for the sgd plan (its rate changes per epoch)")
    optimizer = torch.optim.SGD(params, lr=plan.lr, momentum=plan.momentum, weight_decay=plan.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: epoch_rate_factor(step, plan))
