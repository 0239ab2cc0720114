"""Tip-Adapter-F (Zhang et al., ECCV 2022): Tip-Adapter's cache keys as trainable parameters.

The reference (gaopengcuhk/Tip-Adapter ``main.py`` ``run_tip_adapter_F``) trains the keys with AdamW
(lr 1e-3, eps 1e-4, torch's default weight decay 0.01), cosine annealing to 0 over ``train_epoch`` = 20
epochs, batch 256, with the initial alpha and beta in the loss; then searches alpha and beta on val with
the trained keys. Here the epoch kept is chosen on val by the shared rule (``selection``; the reference
picks it on test), the cosine is stepped per epoch (the same schedule when an epoch is one batch) and a
killed fit resumes from its checkpoint. Untrained, it is exactly Tip-Adapter.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from .base import FeatureSet, Task
from .calibration import calibrate, temperature_tensor
from .prompt_learning import TrainSettings, head_checkpoint_key, train_prompt_module
from .selection import SELECT_HELP, SelectRule
from .tip_adapter import TipAdapterConfig, TipAdapterHead, build_cache_model, search_alpha_beta


class TipAdapterFConfig(TipAdapterConfig):
    """The `tip_adapter_f` block: Tip-Adapter's search plus the reference's fine-tuning recipe."""

    epochs: int = Field(20, ge=1, description="Training epochs (the reference's train_epoch).")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate, cosine-annealed to 0.")
    eps: float = Field(1e-4, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (torch's default, as the reference).")
    select: SelectRule = Field("auto", description=SELECT_HELP)

    def settings(self) -> TrainSettings:
        return TrainSettings(self.epochs, self.batch_size, self.lr, 0.0, self.weight_decay, 0, self.lr)


class TipAdapterFHead(TipAdapterHead):
    name: ClassVar[str] = "tip_adapter_f"
    paper: ClassVar[str | None] = "Zhang et al., ECCV 2022 (Tip-Adapter-F)"
    official_code: ClassVar[str | None] = "gaopengcuhk/Tip-Adapter"
    config_key: ClassVar[str | None] = "tip_adapter_f"
    selects_epoch: ClassVar[bool] = True
    Config = TipAdapterFConfig

    def __init__(self, config: TipAdapterFConfig | None = None) -> None:
        self.config = config or TipAdapterFConfig()

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "TipAdapterFHead":
        if train is None or len(train) == 0:
            raise ValueError(f"{self.name} needs training features (the cache is built from them)")
        self.check(task)
        cfg = self.config
        model = build_cache_model(task, train)
        alpha, beta = cfg.alpha, cfg.beta  # the loss uses the initial values; the search comes after training

        def make_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)

        history, selection, _ = train_prompt_module(
            model, lambda features: model(features, alpha, beta), train, val, len(task.class_names), cfg.settings(),
            task.seed, task.checkpoint, checkpoint_key=head_checkpoint_key(task, cfg), progress=task.progress,
            select=cfg.select, on_epoch=task.on_epoch, make_optimizer=make_optimizer)
        self.history_, self.selection_, self.best_epoch_ = history, selection, selection.epoch
        self.model_ = model.requires_grad_(False)
        self.alpha_, self.beta_, self.search_note_ = search_alpha_beta(model, val, cfg)
        self.calibration_ = calibrate(cfg.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def trainable_parameters(self) -> int:
        return int(self.model_.keys.numel()) if hasattr(self, "model_") else 0
