"""ZS-LP (Silva-Rodriguez et al., CVPR 2024, "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models"): a linear probe whose class prototypes start at the zero-shot ones.

As jusiro/CLAP ``trainers/adapters.py`` (``INIT: ZS``, ``CONSTRAINT: none``): the prototypes ``w`` (C, d) start
at the mean of each class's raw template embeddings (``_get_base_text_features``, here
``zero_shot.mean_template_features``); ``logits = logit_scale * cos(f, w_c)`` (``forward_lp``: L2-normalised
features and prototypes, CLIP's own temperature). Training follows ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``
through Dassl's ``build_optimizer``/``build_lr_scheduler``: SGD lr 0.1, momentum 0.9, no dampening, no
Nesterov, no weight decay, 300 epochs; one constant 1e-5 warm-up epoch, then ``CosineAnnealingLR(T_max=300)``
stepped after each epoch's last batch (``schedule: dassl``). An epoch has as many batches of 256 as Dassl's
image loader (``drop_last`` when there are at least 256 images), cut from the shuffled pool of all augmented
features (``TrainerXCostume.run_epoch``; ``view_sampling: pool``). Validation-free: the last epoch is kept and
no temperature is fitted on val.

Where fewclip differs, and why:

- ``augment_views`` is 0 by default (train on the plain features): the reference always extracts 20 augmented
  passes of the support set (``epochs_aumentation``); set ``augment_views: 20`` for that. Extracting them costs
  20 encoder passes over the support set, so it is opt-in.
- The templates are fewclip's ``prompts`` block; the reference uses one hand-written template per dataset
  (``CUSTOM_TEMPLATES``), plus seven for ImageNet.
- With one template the untrained probe is ``zero_shot``; with several its prototypes have the raw mean's
  direction, as the reference, not the normalised ensemble's (``prototypes: zero_shot`` starts from that, at
  the raw mean's length: fewclip's earlier choice, under which the untrained probe is exactly zero-shot).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field
from torch import nn

from fewclip.heads.base import FeatureSet, HeadBase, Task, normalize, task_backbone
from fewclip.heads.prompts.lengths import ChecksTemplates
from fewclip.heads.registry import register_head
from fewclip.training.selection import SELECT_HELP, SelectRule
from fewclip.heads.on_features.trained_module import ModuleSchedule, ModuleScores, fit_module
from fewclip.heads.on_features.zero_shot import StartPrototypes, start_prototypes


class ZsLpConfig(ModuleSchedule):
    """The `zs_lp` block: the CLAP paper's validation-free schedule."""

    augment_views: int = Field(
        0,
        ge=0,
        description="Train on N cached augmented views per image (the paper extracts 20); 0: the plain features.",
    )
    select: SelectRule = Field("last", description=SELECT_HELP + " The paper is validation-free: last.")
    calibrate: bool = Field(
        False,
        description="Temperature-scale the logits on the validation split (off: validation-free, as in the paper).",
    )


class PrototypeModel(nn.Module):
    """Trainable class prototypes (C, d) scored by cosine times CLIP's logit scale."""

    logit_scale: torch.Tensor  # a buffer, ()

    def __init__(self, prototypes: torch.Tensor, logit_scale: torch.Tensor) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(prototypes.clone())
        self.register_buffer("logit_scale", logit_scale.reshape(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(features) @ normalize(self.prototypes).T


def initial_model(task: Task, prototypes: StartPrototypes = "template_mean") -> PrototypeModel:
    """The untrained probe: the start prototypes (by default the mean raw template embedding of each class),
    CLIP's logit scale."""
    backbone = task_backbone(task, "zs_lp")
    start = start_prototypes(backbone, task.class_names, task.templates, prototypes)
    return PrototypeModel(start, torch.tensor(float(backbone.logit_scale)))


@register_head
class ZsLpHead(ModuleScores, ChecksTemplates, HeadBase):
    name = "zs_lp"
    paper = "Silva-Rodriguez et al., CVPR 2024 (ZS-LP)"
    official_code = "jusiro/CLAP"
    published_as = "ZS-LP"
    paper_selection = "validation-free"  # jusiro/CLAP: fixed schedule, the last epoch
    config_key = "zs_lp"
    Config = ZsLpConfig
    uses_shots = True
    has_differentiable_logits = True
    uses_augmented_views = True
    selects_epoch = True
    calibrates = True

    model_: PrototypeModel  # set by fit_module

    def train_step(
        self, model: PrototypeModel, train: FeatureSet
    ) -> Callable[[torch.Tensor, torch.Tensor], float] | None:
        """The loss of one step for the untrained ``model`` (None: plain cross-entropy); CLAP adds its
        constraint here."""
        return None

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "ZsLpHead":
        if train is None or len(train) == 0:
            raise ValueError(f"{self.name} needs training features")
        self.check(task)
        cfg = self.config
        model = initial_model(task, cfg.prototypes)
        fit_module(self, model, task, train, val, cfg.settings(), self.train_step(model, train))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "prototypes": self.model_.prototypes.detach(),
            "logit_scale": self.model_.logit_scale.reshape(1),
            "temperature": self.temperature_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.model_ = PrototypeModel(tensors["prototypes"], tensors["logit_scale"]).requires_grad_(False)
        self.temperature_ = tensors["temperature"].reshape(())
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return int(self.model_.prototypes.numel()) if hasattr(self, "model_") else 0
