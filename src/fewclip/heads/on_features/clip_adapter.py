"""CLIP-Adapter (Gao et al., IJCV 2023, arXiv 2110.04544): a residual bottleneck MLP on the image features.

``f' = ratio * A(f) + (1 - ratio) * f`` with ``A = ReLU(W2 ReLU(W1 f))`` (no biases, d -> d/4 -> d, drawn as
``nn.Linear`` draws), on the raw image features, then CLIP's logits against the normalised mean raw template
embedding of each class. Architecture, reduction 4 and ratio 0.2 from the authors' code (gaopengcuhk/CLIP-Adapter
``clip_adapter.py``: ``Adapter(c_in, reduction=4)``, ``ratio = 0.2``); that file has no optimiser settings, so
the head follows the CLAP authors' CLIP-Adapter (jusiro/CLAP ``trainers/adapters.py``, ``INIT: ClipA``:
``init_clipA``, ``forward_clipadapter``, prototypes from ``_get_base_text_features``) and their
``configs/trainers/SGD_lr1e-1_B256_ep300.yaml`` through Dassl: SGD lr 0.1, momentum 0.9, no weight decay,
300 epochs; one constant 1e-5 warm-up epoch, then ``CosineAnnealingLR(T_max=300)`` stepped after each epoch's
last batch (``schedule: dassl``); as many batches of 256 as Dassl's image loader (``drop_last``), cut from the
shuffled pool of all augmented features (``TrainerXCostume.run_epoch``; ``view_sampling: pool``).

Where fewclip differs, and why:

- ``augment_views`` is 0 by default: the reference trains on 20 augmented passes of the support set; set
  ``augment_views: 20`` for that (opt-in: 20 encoder passes over the support set).
- The epoch kept is chosen on val by the shared rule (``select``) and the logits are temperature-scaled on val;
  the reference keeps the last epoch (``select: last``, ``calibrate: false`` give exactly that).
- The templates are fewclip's ``prompts`` block (the reference: one per dataset, plus seven for ImageNet).
  With one template, ratio 0 is ``zero_shot``; with several, ``prototypes: zero_shot`` scores against the
  zero-shot ensemble instead of the raw mean (fewclip's earlier choice).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from pydantic import Field
from torch import nn

from fewclip.backbones.protocol import Backbone
from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, HeadBase, Task, normalize, task_backbone
from fewclip.heads.batch_invariant import row_dot
from fewclip.heads.prompts.lengths import ChecksTemplates, check_template_task
from fewclip.heads.registry import register_head
from fewclip.heads.on_features.trained_module import ModuleSchedule, ModuleScores, fit_module
from fewclip.heads.on_features.zero_shot import StartPrototypes, start_prototypes


class AdapterShape(ConfigBlock):
    """The adapter's own keys (first in the `clip_adapter` block)."""

    reduction: int = Field(4, ge=1, description="Bottleneck width = image dim // reduction.")
    ratio: float = Field(0.2, ge=0, le=1, description="Residual ratio: weight of the adapted feature.")


class ClipAdapterConfig(ModuleSchedule, AdapterShape):
    """The `clip_adapter` block: the reference's adapter, the CLAP authors' schedule for it."""


class AdapterModel(nn.Module):
    """The bottleneck MLP (trainable) with the frozen class prototypes and logit scale."""

    prototypes: torch.Tensor  # buffers: (C, d) and ()
    logit_scale: torch.Tensor

    def __init__(
        self, down: torch.Tensor, up: torch.Tensor, ratio: float, prototypes: torch.Tensor, logit_scale: torch.Tensor
    ) -> None:
        super().__init__()
        self.down = nn.Parameter(down)  # (d / reduction, d)
        self.up = nn.Parameter(up)  # (d, d / reduction)
        self.ratio = ratio
        self.register_buffer("prototypes", prototypes)  # (C, d)
        self.register_buffer("logit_scale", logit_scale.reshape(()))

    def adapted(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) raw image features -> (n, d) ratio * A(f) + (1 - ratio) * f."""
        hidden = torch.relu(row_dot(features, self.down))
        return self.ratio * torch.relu(row_dot(hidden, self.up)) + (1 - self.ratio) * features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(self.adapted(features)) @ self.prototypes.T


def class_prototypes(
    backbone: Backbone, class_names: Sequence[str], templates: Sequence[str], kind: StartPrototypes
) -> tuple[torch.Tensor, torch.Tensor]:
    """((C, d) normalised prototypes, by default of the mean raw template embeddings; CLIP's logit scale): the
    frozen classifier the adapter feeds."""
    prototypes = normalize(start_prototypes(backbone, class_names, templates, kind))
    return prototypes, torch.tensor(float(backbone.logit_scale))


def init_adapter(dim: int, reduction: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (down, up) weights, drawn as ``nn.Linear`` draws its default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    hidden = max(dim // reduction, 1)
    down = (torch.rand(hidden, dim, generator=generator) * 2 - 1) / math.sqrt(dim)
    up = (torch.rand(dim, hidden, generator=generator) * 2 - 1) / math.sqrt(hidden)
    return down, up


@register_head
class ClipAdapterHead(ModuleScores, ChecksTemplates, HeadBase):
    name = "clip_adapter"
    paper = "Gao et al., IJCV 2023 (CLIP-Adapter)"
    official_code = "jusiro/CLAP"
    published_as = "CLIP-Adapter"
    paper_selection = "validation-free"  # jusiro/CLAP's CLIP-Adapter: Dassl's last epoch
    config_key = "clip_adapter"
    Config = ClipAdapterConfig
    uses_shots = True
    transfers = True
    has_differentiable_logits = True
    uses_augmented_views = True
    selects_epoch = True
    calibrates = True

    model_: AdapterModel  # set by fit_module

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "ClipAdapterHead":
        if train is None or len(train) == 0:
            raise ValueError(f"{self.name} needs training features")
        self.check(task)
        backbone = task_backbone(task, self.name)
        cfg = self.config
        down, up = init_adapter(train.features.shape[1], cfg.reduction, torch.Generator().manual_seed(task.seed))
        prototypes = class_prototypes(backbone, task.class_names, task.templates, cfg.prototypes)
        fit_module(self, AdapterModel(down, up, cfg.ratio, *prototypes), task, train, val, cfg.settings())
        self.prompt_templates_ = list(task.templates)
        return self

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "ClipAdapterHead":
        """The same visual adapter against other class names' prototypes (base-to-new)."""
        head = ClipAdapterHead(self.config)
        head.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_")})
        check_template_task(Task(list(class_names), self.prompt_templates_, backbone), self.name)
        prototypes = class_prototypes(backbone, class_names, self.prompt_templates_, self.config.prototypes)
        head.model_ = AdapterModel(
            self.model_.down.detach(), self.model_.up.detach(), self.config.ratio, *prototypes
        ).requires_grad_(False)
        return head

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"adapter.{k}": v.detach().reshape(v.shape or (1,)) for k, v in self.model_.state_dict().items()}
        tensors["temperature"] = self.temperature_.reshape(1)
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.model_ = AdapterModel(
            tensors["adapter.down"],
            tensors["adapter.up"],
            self.config.ratio,
            tensors["adapter.prototypes"],
            tensors["adapter.logit_scale"],
        ).requires_grad_(False)
        self.temperature_ = tensors["temperature"].reshape(())
        self.prompt_templates_ = list(meta.get("templates", []))
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return int(self.model_.down.numel() + self.model_.up.numel()) if hasattr(self, "model_") else 0
