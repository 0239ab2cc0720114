"""CLAP, the CLass-Adaptive linear Probe (Silva-Rodriguez et al., CVPR 2024): ZS-LP plus a per-class
penalty that keeps each prototype near its zero-shot start.

As jusiro/CLAP ``trainers/adapters.py`` (``INIT: ZS``, ``CONSTRAINT: l2``): ``loss = CE + mean_c(lambda_c *
||w_c - w0_c||^2)`` (``AdapterMethod.zero_shot_constraint``), ``w0`` the untrained prototypes (the mean raw
template embeddings, ``_get_base_text_features``). The multipliers are set once, before training
(``init_lagrangian_multipliers``): ``lambda_c`` = the mean softmax probability of class c, under the untrained
probe's logits, over the training features of class c (all augmented views when they are cached, as the
reference computes them on its 20 augmented passes), so classes where zero-shot is already right are held close
to it. Validation-free, with ZS-LP's schedule, batches and differences from the reference (see ``zs_lp``).
A class with no training image gets lambda 0 where the reference divides by zero.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fewclip.heads.base import FeatureSet
from fewclip.heads.registry import register_head
from fewclip.heads.on_features.zs_lp import PrototypeModel, ZsLpConfig, ZsLpHead


class ClapConfig(ZsLpConfig):
    """The `clap` block: ZS-LP's validation-free schedule (the constraint has no hyperparameter)."""


def class_multipliers(zero_shot_logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C,) lambda_c = mean over support images of class c of their zero-shot softmax probability for c."""
    probabilities = torch.softmax(zero_shot_logits.float(), dim=-1)  # (n, C)
    one_hot = nn.functional.one_hot(labels.long(), n_classes).float()
    return torch.diag(probabilities.T @ one_hot) / one_hot.sum(dim=0).clamp_min(1)


@register_head
class ClapHead(ZsLpHead):
    name = "clap"
    paper = "Silva-Rodriguez et al., CVPR 2024 (CLAP)"
    official_code = "jusiro/CLAP"
    published_as = "CLAP"
    paper_selection = "validation-free"  # jusiro/CLAP: the last epoch, nothing on val
    config_key = "clap"
    Config = ClapConfig

    def train_step(self, model: PrototypeModel, train: FeatureSet) -> Callable[[torch.Tensor, torch.Tensor], float]:
        features, labels = train.features, train.labels
        if train.views is not None:  # the reference sets them on its augmented support features
            features = train.views.flatten(0, 1)
            labels = labels.repeat_interleave(train.views.shape[1])
        with torch.no_grad():  # the untrained probe's logits: the reference's logits_zs
            multipliers = class_multipliers(model(features), labels, model.prototypes.shape[0])
        anchor = model.prototypes.detach().clone()  # w0: the zero-shot start

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            penalty = (multipliers * (model.prototypes - anchor).pow(2).sum(dim=-1)).mean()
            loss = nn.functional.cross_entropy(model(x).float(), y) + penalty
            loss.backward()
            return loss.item()

        return step
