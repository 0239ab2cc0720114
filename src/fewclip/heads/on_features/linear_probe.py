"""Linear probe: Linear(d -> C) on L2-normalised frozen image features, AdamW; epoch chosen by the shared
rule of ``selection``, logits temperature-scaled on val (``calibration``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from fewclip.configbase import ConfigBlock
from fewclip.metrics import summarize
from fewclip.heads.base import FeatureSet, HeadBase, Task, check_loss, normalize
from fewclip.training.calibration import calibrate, temperature_tensor
from fewclip.heads.registry import register_head
from fewclip.training.selection import SELECT_HELP, BestEpoch, SelectRule


class LinearProbeConfig(ConfigBlock):
    """The `linear_probe` block (the linear probe's optimiser; `training:` is its deprecated name)."""

    epochs: int = Field(200, ge=1, description="Epochs over the support features.")
    batch_size: int = Field(32, ge=1, description="Support features per step.")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    select: SelectRule = Field("auto", description=SELECT_HELP)
    calibrate: bool = Field(True, description="Temperature-scale the logits on the validation split (argmax unchanged).")


@register_head
class LinearProbeHead(HeadBase):
    name = "linear_probe"
    paper = None  # fewclip's own
    official_code = None
    config_key = "linear_probe"  # its top-level config block (`training:` before, deprecated)
    Config = LinearProbeConfig
    published_as = "Linear probe CLIP"
    uses_shots = True
    selects_epoch = True
    calibrates = True

    def __init__(self, config: LinearProbeConfig | None = None) -> None:
        self.config = config or LinearProbeConfig()

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "LinearProbeHead":
        if train is None or len(train) == 0:
            raise ValueError("linear_probe needs training features")
        cfg, n_classes = self.config, len(task.class_names)
        generator = torch.Generator().manual_seed(task.seed)
        x, y = normalize(train.features), train.labels
        layer = nn.Linear(x.shape[1], n_classes)
        with torch.no_grad():  # seeded init, independent of global RNG state
            bound = 1 / x.shape[1] ** 0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        keeper = BestEpoch(cfg.select)
        self.history_ = []
        bar = tqdm(range(1, cfg.epochs + 1), desc="epochs", unit="epoch", leave=False, disable=not task.progress)
        for epoch in bar:
            order = torch.randperm(len(y), generator=generator)
            total = 0.0
            for start in range(0, len(y), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = nn.functional.cross_entropy(layer(x[idx]), y[idx])
                check_loss(loss.item(), epoch, cfg.lr)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            row = {"epoch": float(epoch), "train_loss": total / len(y)}
            if val is not None and len(val):
                with torch.no_grad():
                    val_logits = layer(normalize(val.features))
                scores = summarize(val.labels.numpy(), val_logits.argmax(-1).numpy(), n_classes)
                val_loss = float(nn.functional.cross_entropy(val_logits, val.labels))
                row.update(val_accuracy=scores["accuracy"], val_macro_f1=scores["macro_f1"], val_loss=val_loss)
            keeper.observe(epoch, row, lambda: copy.deepcopy(layer.state_dict()))
            self.history_.append(row)
            if task.on_epoch is not None:
                task.on_epoch(row)
            bar.set_postfix({k: f"{row[k]:.3f}" for k in ("train_loss", "val_macro_f1") if k in row}, refresh=False)
        self.selection_, kept = keeper.choose(self.history_, val.labels if val is not None else None, n_classes)
        if kept is not None:
            layer.load_state_dict(kept)
        self.best_epoch_ = self.selection_.epoch
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

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=-1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_, "temperature": self.temperature_.reshape(1)}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.bias_ = tensors["weight"], tensors["bias"]
        self.temperature_ = tensors.get("temperature", torch.ones(1)).reshape(())  # heads saved before calibration: 1
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return self.weight_.numel() + self.bias_.numel() if hasattr(self, "weight_") else 0
