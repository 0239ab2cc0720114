"""Tip-Adapter (Zhang et al., ECCV 2022, "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification"): a training-free cache model on top of zero-shot CLIP.

As gaopengcuhk/Tip-Adapter (``utils.py`` ``build_cache_model``, ``main.py`` ``run_tip_adapter``): keys =
the support features (N, d) averaged over their augmented passes, then L2-normalised; values = one-hot labels
(N, C); ``logits = logit_scale * cos(x, prototypes) + alpha * exp(-beta * (1 - x_n @ keys.T)) @ values`` with
``prototypes`` the zero-shot ensemble (``utils.py`` ``clip_classifier``, as ``zero_shot``). alpha and beta
are searched on the validation split over the reference's grid (``utils.py`` ``search_hp``: ``search_step``
values ``i * (scale - 0.1) / step + 0.1``, beta-major, the first best val accuracy wins; the grid values
themselves are returned); without a validation split the initial alpha, beta are kept.
Defaults: ``configs/imagenet.yaml`` and ``configs/oxford_pets.yaml`` (search_scale [7, 3], search_step
[200, 20], init_beta 1, init_alpha 1.17); other datasets' files differ (``ucf101.yaml``: init_alpha 3;
``caltech101.yaml``: search_scale [12, 5], init_alpha 3; ...), set them in the ``tip_adapter`` block
(``configs/coop_suite`` does, for Tip-Adapter-F too).

Where fewclip differs, and why:

- ``augment_views`` is 0 by default (keys = the plain features): the reference averages ``augment_epoch`` = 10
  augmented passes; set ``augment_views: 10`` for that. fewclip's cached views are drawn with the papers'
  shared augmentation (RandomResizedCrop scale 0.08-1 + flip), the reference's cache uses scale 0.5-1.
- The zero-shot part uses the backbone's logit scale where the reference writes ``100.``: that is CLIP's
  learned ``logit_scale.exp()`` for the OpenAI weights, and the right scale for other backbones.
- When no grid point classifies any val image correctly the reference returns beta = alpha = 0 (its
  best accuracy starts at 0 and only a strict improvement is kept); fewclip keeps the first grid point.
- ``main.py`` searches on val as here; ``main_imagenet.py`` (ImageNet has no val split there) searches on
  test, which fewclip never does.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, HeadBase, Task, normalize
from fewclip.heads.batch_invariant import row_dot
from fewclip.training.calibration import calibrate, temperature_tensor
from fewclip.heads.prompts.lengths import ChecksTemplates
from fewclip.heads.registry import register_head
from fewclip.heads.on_features.zero_shot import ZeroShotHead


class TipAdapterConfig(ConfigBlock):
    """The `tip_adapter` block: the reference's ImageNet settings (configs/imagenet.yaml)."""

    alpha: float = Field(1.17, ge=0, description="Cache weight when not searched (the reference's init_alpha).")
    beta: float = Field(1.0, gt=0, description="Affinity sharpness when not searched (the reference's init_beta).")
    search: bool = Field(True, description="Search alpha and beta on the validation split (never on test).")
    search_scale_beta: float = Field(7.0, gt=0.1, description="Largest beta of the search grid (search_scale[0]).")
    search_scale_alpha: float = Field(3.0, gt=0.1, description="Largest alpha of the search grid (search_scale[1]).")
    search_steps_beta: int = Field(200, ge=1, description="Beta grid points (search_step[0]).")
    search_steps_alpha: int = Field(20, ge=1, description="Alpha grid points (search_step[1]).")
    augment_views: int = Field(
        0,
        ge=0,
        description="Keys = mean of N cached augmented views per support image (the "
        "paper uses 10); 0: the plain features.",
    )
    calibrate: bool = Field(
        True, description="Temperature-scale the logits on the validation split (argmax unchanged)."
    )


def search_grid(scale: float, steps: int) -> list[float]:
    """The reference's grid: ``[i * (scale - 0.1) / steps + 0.1 for i in range(steps)]``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def support_keys(train: FeatureSet) -> torch.Tensor:
    """(N, d) normalised cache keys: each image's feature, or the mean of its cached augmented views."""
    features = train.views.mean(dim=1) if train.views is not None else train.features
    return normalize(features.float())


class CacheModel(nn.Module):
    """Zero-shot logits plus the cache logits; ``keys`` is a parameter (Tip-Adapter-F trains it)."""

    values: torch.Tensor  # buffers: (N, C), (C, d) and ()
    prototypes: torch.Tensor
    logit_scale: torch.Tensor

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, prototypes: torch.Tensor, logit_scale: torch.Tensor
    ) -> None:
        super().__init__()
        self.keys = nn.Parameter(keys.clone())  # (N, d)
        self.register_buffer("values", values)  # (N, C) one-hot
        self.register_buffer("prototypes", prototypes)  # (C, d) zero-shot class prototypes
        self.register_buffer("logit_scale", logit_scale)

    def clip_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C): the zero-shot logits, computed exactly as ``ZeroShotHead.logits``."""
        return self.logit_scale * normalize(features) @ self.prototypes.T

    def cache_logits(self, features: torch.Tensor, beta: float) -> torch.Tensor:
        """(n, d) -> (n, C) = exp(-beta * (1 - cos(x, key))) @ values (the reference uses the raw key rows)."""
        affinity = row_dot(normalize(features), self.keys)  # (n, N)
        return torch.exp(-beta * (1 - affinity)) @ self.values

    def forward(self, features: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        return self.clip_logits(features) + alpha * self.cache_logits(features, beta)


def search_alpha_beta(model: CacheModel, val: FeatureSet | None, config: TipAdapterConfig) -> tuple[float, float, str]:
    """(alpha, beta, note): the grid point with the best val accuracy (the first one on ties, beta-major as in
    the reference), or the config's values when search is off or there is no validation split."""
    if not config.search:
        return config.alpha, config.beta, "fixed (search: false)"
    if val is None or len(val) == 0:
        return config.alpha, config.beta, "fixed: no validation split to search on"
    betas = search_grid(config.search_scale_beta, config.search_steps_beta)
    alpha_grid = search_grid(config.search_scale_alpha, config.search_steps_alpha)
    alphas = torch.tensor(alpha_grid)
    with torch.no_grad():
        clip = model.clip_logits(val.features)
        correct = torch.stack(
            [
                (
                    (clip[None] + alphas[:, None, None] * model.cache_logits(val.features, beta)[None]).argmax(-1)
                    == val.labels[None]
                ).sum(-1)
                for beta in betas
            ]
        )  # (betas, alphas) correct counts
    best = int(correct.flatten().argmax())  # the first maximum, as the reference's strict ">" keeps
    beta, alpha = betas[best // len(alpha_grid)], alpha_grid[best % len(alpha_grid)]  # the grid's own values
    return alpha, beta, f"searched on {len(val)} val images: {int(correct.max())} correct"


@register_head
class TipAdapterHead(ChecksTemplates, HeadBase):
    name = "tip_adapter"
    paper = "Zhang et al., ECCV 2022 (Tip-Adapter)"
    official_code = "gaopengcuhk/Tip-Adapter"
    published_as = "Tip-Adapter"
    paper_selection = "validation split"  # main.py search_hp: val; main_imagenet.py: test
    paper_selection_except = {"ImageNet": "test set (released code)"}
    config_key = "tip_adapter"
    Config = TipAdapterConfig
    validation_search = "Tip-Adapter's alpha and beta (grid search)"
    uses_shots = True
    transfers = False  # the cache holds the training classes' labels
    has_differentiable_logits = True
    uses_augmented_views = True
    calibrates = True

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "TipAdapterHead":
        if train is None or len(train) == 0:
            raise ValueError(f"{self.name} needs training features (the cache is built from them)")
        self.check(task)
        self.model_ = build_cache_model(task, train)
        self.history_: list[dict[str, float]] = []  # training-free
        self.alpha_, self.beta_, self.search_note_ = search_alpha_beta(self.model_, val, self.config)
        self.calibration_ = calibrate(self.config.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) zero-shot + alpha * cache logits, before temperature scaling."""
        with torch.no_grad():
            scores: torch.Tensor = self.model_(features, self.alpha_, self.beta_)
        return scores

    def differentiable_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``logits`` with autograd on, for saliency."""
        scores: torch.Tensor = self.model_(features, self.alpha_, self.beta_)
        return scores / self.temperature_

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) temperature-scaled logits (same argmax as the uncalibrated ones)."""
        return self.uncalibrated_logits(features) / self.temperature_

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"cache.{k}": v.detach().reshape(v.shape or (1,)) for k, v in self.model_.state_dict().items()}
        tensors["alpha_beta"] = torch.tensor([self.alpha_, self.beta_], dtype=torch.float64)
        tensors["temperature"] = self.temperature_.reshape(1)
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.model_ = cache_model_from_state(tensors)
        self.alpha_, self.beta_ = (float(v) for v in tensors["alpha_beta"])
        self.temperature_ = tensors["temperature"].reshape(())
        if self.selects_epoch:  # Tip-Adapter-F
            self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return 0  # training-free: the cache is built, alpha and beta are searched


def build_cache_model(task: Task, train: FeatureSet) -> CacheModel:
    """The untrained cache: support keys and one-hot values, with the zero-shot prototypes of the templates."""
    zero_shot = ZeroShotHead().fit(Task(list(task.class_names), list(task.templates), task.backbone))
    values = nn.functional.one_hot(train.labels.long(), len(task.class_names)).float()
    return CacheModel(support_keys(train), values, zero_shot.prototypes_, zero_shot.logit_scale_)


def cache_model_from_state(tensors: dict[str, torch.Tensor]) -> CacheModel:
    """A cache model rebuilt from a head's saved ``cache.*`` tensors."""
    model = CacheModel(
        tensors["cache.keys"],
        tensors["cache.values"],
        tensors["cache.prototypes"],
        tensors["cache.logit_scale"].reshape(()),
    )
    return model.requires_grad_(False)
