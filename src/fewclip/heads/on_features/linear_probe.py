"""Linear probe: Linear(d -> C) on L2-normalised frozen image features, AdamW at a constant rate, trained by the
loop on cached features (``training.features_loop``: per-epoch checkpoint and resume); epoch chosen by the shared
rule of ``selection``, logits temperature-scaled on val (``calibration``)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, HeadBase, Task, normalize
from fewclip.heads.registry import register_head
from fewclip.training.calibration import calibrate, temperature_tensor
from fewclip.training.features_loop import FeatureTrainSettings, unit_options, train_on_features
from fewclip.training.selection import SELECT_HELP, SelectRule


class LinearProbeConfig(ConfigBlock):
    """The `linear_probe` block (the linear probe's optimiser; `training:` is its deprecated name)."""

    epochs: int = Field(200, ge=1, description="Epochs over the support features.")
    batch_size: int = Field(32, ge=1, description="Support features per step.")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    select: SelectRule = Field("auto", description=SELECT_HELP)
    calibrate: bool = Field(
        True, description="Temperature-scale the logits on the validation split (argmax unchanged)."
    )


@register_head
class LinearProbeHead(HeadBase):
    name = "linear_probe"
    paper = None  # fewclip's own
    official_code = None
    paper_selection = "few-shot validation"  # CoOp's lpclip/linear_probe.py: C on min(shots, 4) val a class
    config_key = "linear_probe"  # its top-level config block (`training:` before, deprecated)
    Config = LinearProbeConfig
    published_as = "Linear probe CLIP"
    uses_shots = True
    selects_epoch = True
    calibrates = True

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "LinearProbeHead":
        if train is None or len(train) == 0:
            raise ValueError("linear_probe needs training features")
        cfg, n_classes = self.config, len(task.class_names)
        generator = torch.Generator().manual_seed(task.seed)  # draws the init, then every epoch's order
        layer = nn.Linear(train.features.shape[1], n_classes)
        with torch.no_grad():  # seeded init, independent of global RNG state
            bound = 1 / train.features.shape[1] ** 0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        settings = FeatureTrainSettings(
            cfg.epochs, cfg.batch_size, cfg.lr, 0.0, cfg.weight_decay, 0, cfg.lr, constant_lr=True
        )
        normalized = FeatureSet(normalize(train.features), train.labels)
        normalized_val = FeatureSet(normalize(val.features), val.labels) if val is not None else None
        self.history_, self.selection_, _ = train_on_features(
            layer,
            layer,
            normalized,
            normalized_val,
            n_classes,
            settings,
            **unit_options(task, cfg),
            generator=generator,
            make_optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        )
        self.best_epoch_: int | None = self.selection_.epoch  # None: loaded from a head saved without it
        self.weight_, self.bias_ = layer.weight.detach().clone(), layer.bias.detach().clone()
        self.calibration_ = calibrate(cfg.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) logits of the linear layer, before temperature scaling."""
        return normalize(features) @ self.weight_.T + self.bias_

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) temperature-scaled logits (same argmax as the uncalibrated ones)."""
        return self.uncalibrated_logits(features) / self.temperature_

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_, "temperature": self.temperature_.reshape(1)}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.bias_ = tensors["weight"], tensors["bias"]
        self.temperature_ = tensors.get("temperature", torch.ones(1)).reshape(())  # heads saved before calibration: 1
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return self.weight_.numel() + self.bias_.numel() if hasattr(self, "weight_") else 0
