"""What the heads that train one torch module on cached features share (CLIP-Adapter, ZS-LP, CLAP, TaskRes): the
module, features (n, d) -> logits (n, C), is trained by the loop on cached features and kept frozen as ``model_``
(``fit_module``), and the head scores with it, divided by the temperature calibrated on validation
(``ModuleScores``)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field
from torch import nn

from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, Task
from fewclip.heads.on_features.zero_shot import PROTOTYPES_HELP, StartPrototypes
from fewclip.training.calibration import TemperatureScaled, calibrate, temperature_tensor
from fewclip.training.features_loop import (
    DROP_LAST_HELP,
    VIEWS_HELP,
    FeatureTrainSettings,
    ViewSampling,
    settings_of,
    train_on_features,
    unit_options,
)
from fewclip.training.schedule import SCHEDULE_HELP, Schedule
from fewclip.training.selection import SELECT_HELP, SelectRule


class ModuleSchedule(ConfigBlock):
    """The schedule the CLAP authors train a module on cached features with (ZS-LP, CLIP-Adapter; CLAP is ZS-LP's):
    SGD with momentum, one constant warm-up epoch, then Dassl's cosine, over 300 epochs of batches of 256."""

    epochs: int = Field(300, ge=1, description="Epochs over the support features.")
    batch_size: int = Field(256, ge=1, description="Support features per SGD step.")
    lr: float = Field(0.1, gt=0, description="SGD learning rate after warm-up (cosine-annealed).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="SGD weight decay.")
    warmup_epochs: int = Field(1, ge=0, description="Epochs at the constant warmup_lr before the cosine.")
    warmup_lr: float = Field(1e-5, gt=0, description="Constant learning rate during warm-up.")
    prototypes: StartPrototypes = Field("template_mean", description=PROTOTYPES_HELP)
    schedule: Schedule = Field("dassl", description=SCHEDULE_HELP)
    drop_last: bool = Field(True, description=DROP_LAST_HELP)
    augment_views: int = Field(
        0, ge=0, description="Train on N cached augmented views per image; 0: the plain features."
    )
    view_sampling: ViewSampling = Field("pool", description=VIEWS_HELP)
    select: SelectRule = Field("auto", description=SELECT_HELP)
    calibrate: bool = Field(
        True, description="Temperature-scale the logits on the validation split (argmax unchanged)."
    )

    def settings(self) -> FeatureTrainSettings:
        return settings_of(self)


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
