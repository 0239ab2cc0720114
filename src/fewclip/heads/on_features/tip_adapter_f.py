"""Tip-Adapter-F (Zhang et al., ECCV 2022): Tip-Adapter's cache keys as trainable parameters.

As gaopengcuhk/Tip-Adapter ``main.py`` ``run_tip_adapter_F``: the keys (N, d) are the weight of a linear
layer, trained with AdamW (lr 1e-3, eps 1e-4, torch's default weight decay 0.01 and betas) for
``train_epoch`` = 20 epochs in shuffled batches of 256 that keep the last partial batch (``build_data_loader``:
``drop_last=False``), on cross-entropy of ``logit_scale * cos(x, prototypes) + init_alpha * exp(-init_beta *
(1 - x_n @ keys.T)) @ values`` with the raw (not renormalised) key rows; the cosine annealing is stepped after
every batch (``CosineAnnealingLR(T_max = train_epoch * len(train_loader_F))``: step t of T at
``lr * (1 + cos(pi * t / T)) / 2``). Then alpha and beta are searched on val with the trained keys
(``search_hp(..., adapter=adapter)``). Untrained, it is exactly Tip-Adapter.

Where fewclip differs, and why:

- The epoch kept is chosen on val by the shared rule (``selection``, ``select``); the reference keeps the epoch
  with the best *test* accuracy, which would report a test score tuned on test.
- Training images are the cached features, or with ``augment_views`` one random cached view of each image per
  epoch; the reference re-augments every image every epoch (a fresh crop each time, not one of N).
- The keys train in float32; the reference trains them in CLIP's float16 on GPU (its eps 1e-4 is for that).
- The zero-shot part uses the backbone's logit scale where the reference writes ``100.`` (see ``zero_shot``).
- A killed fit resumes from its checkpoint.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fewclip.heads.base import FeatureSet, Task
from fewclip.training.calibration import calibrate, temperature_tensor
from fewclip.training.features_loop import FeatureTrainSettings, unit_options, train_on_features
from fewclip.heads.registry import register_head
from fewclip.training.selection import SELECT_HELP, SelectRule
from fewclip.heads.on_features.tip_adapter import TipAdapterConfig, TipAdapterHead, build_cache_model, search_alpha_beta


class TipAdapterFConfig(TipAdapterConfig):
    """The `tip_adapter_f` block: Tip-Adapter's search plus the reference's fine-tuning recipe."""

    epochs: int = Field(20, ge=1, description="Training epochs (the reference's train_epoch).")
    batch_size: int = Field(
        256,
        ge=1,
        description="Support features per step; the last partial batch trains too, as the reference's loader.",
    )
    lr: float = Field(
        1e-3,
        gt=0,
        description="AdamW learning rate, cosine-annealed towards 0 every step "
        "(over epochs * batches per epoch, as the reference).",
    )
    eps: float = Field(1e-4, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (torch's default, as the reference).")
    anneal: Literal["per_step", "per_epoch"] = Field(
        "per_step",
        description="When the cosine steps: 'per_step' after every batch, over epochs * batches per epoch "
        "(the reference's CosineAnnealingLR); 'per_epoch' once an epoch (fewclip's earlier schedule; the same rates "
        "when an epoch is one batch).",
    )
    select: SelectRule = Field("auto", description=SELECT_HELP)

    def settings(self) -> FeatureTrainSettings:
        return FeatureTrainSettings(
            self.epochs,
            self.batch_size,
            self.lr,
            0.0,
            self.weight_decay,
            0,
            self.lr,
            per_step=self.anneal == "per_step",
        )


@register_head
class TipAdapterFHead(TipAdapterHead):
    name = "tip_adapter_f"
    paper = "Zhang et al., ECCV 2022 (Tip-Adapter-F)"
    official_code = "gaopengcuhk/Tip-Adapter"
    published_as = "Tip-Adapter-F"
    paper_selection = "test set (released code)"  # main.py: the best-test-accuracy epoch
    config_key = "tip_adapter_f"
    Config = TipAdapterFConfig
    selects_epoch = True

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "TipAdapterFHead":
        if train is None or len(train) == 0:
            raise ValueError(f"{self.name} needs training features (the cache is built from them)")
        self.check(task)
        cfg = self.config
        model = build_cache_model(task, train)
        alpha, beta = cfg.alpha, cfg.beta  # the loss uses the initial values; the search comes after training

        def make_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)

        history, selection, _ = train_on_features(
            model,
            lambda features: model(features, alpha, beta),
            train,
            val,
            len(task.class_names),
            cfg.settings(),
            **unit_options(task, cfg),
            make_optimizer=make_optimizer,
        )
        self.history_, self.selection_, self.best_epoch_ = history, selection, selection.epoch
        self.model_ = model.requires_grad_(False)
        self.alpha_, self.beta_, self.search_note_ = search_alpha_beta(model, val, cfg)
        self.calibration_ = calibrate(cfg.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def trainable_parameters(self) -> int:
        return int(self.model_.keys.numel()) if hasattr(self, "model_") else 0
