"""What the heads that train one torch module on cached features share (CLIP-Adapter, ZS-LP, CLAP, TaskRes): the
module, features (n, d) -> logits (n, C), is trained by the loop on cached features and kept frozen as ``model_``
(``fit_module``), and the head scores with it, divided by the temperature calibrated on validation
(``ModuleScores``)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fewclip.heads.base import FeatureSet, Task
from fewclip.training.calibration import TemperatureScaled, calibrate, temperature_tensor
from fewclip.training.features_loop import FeatureTrainSettings, unit_options, train_on_features


def fit_module(
    head: Any,
    model: nn.Module,
    task: Task,
    train: FeatureSet,
    val: FeatureSet | None,
    settings: FeatureTrainSettings,
    train_step: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> None:
    """Train ``model`` with ``train_on_features`` as ``head.config`` says (its epoch selection, its checkpoint key;
    ``train_step`` and ``make_optimizer`` as the loop takes them), then set the head's ``history_``, ``selection_``,
    ``best_epoch_``, ``model_`` (frozen), ``calibration_`` and ``temperature_``."""
    cfg = head.config
    history, selection, _ = train_on_features(
        model,
        model,
        train,
        val,
        len(task.class_names),
        settings,
        **unit_options(task, cfg),
        train_step=train_step,
        make_optimizer=make_optimizer,
    )
    head.history_, head.selection_, head.best_epoch_ = history, selection, selection.epoch
    head.model_ = model.requires_grad_(False)
    head.calibration_ = calibrate(cfg.calibrate, val, head.uncalibrated_logits)
    head.temperature_ = temperature_tensor(head.calibration_)


class ModuleScores(TemperatureScaled):
    """The scores of a head fitted by ``fit_module``: ``model_``'s logits, divided by ``temperature_`` (1 when the
    head does not calibrate)."""

    model_: nn.Module
    temperature_: torch.Tensor

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) the module's logits, before temperature scaling."""
        with torch.no_grad():
            scores: torch.Tensor = self.model_(features)
        return scores

    def differentiable_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``logits`` with autograd on, for saliency."""
        scores: torch.Tensor = self.model_(features)
        return scores / self.temperature_
