"""CLIP-Adapter against jusiro/CLAP ``trainers/adapters.py`` (``INIT: ClipA``), re-implemented from the official
file: ``AdapterMethod.init_clipA`` (frozen prototypes from ``_get_base_text_features``, the bias-free
d -> d/4 -> d MLP with ReLUs), ``CustomCLIP.forward_clipadapter`` (``ratio * mlp(f) + (1 - ratio) * f`` on the raw
features, cosine to the normalised prototypes times the logit scale) and the CLAP trainer (``clap_trainer``:
Dassl's SGD, warm-up + cosine stepped per epoch, batches cut from the pooled views with Dassl's batch count).
The architecture and ratio are gaopengcuhk/CLIP-Adapter ``clip_adapter.py``'s ``Adapter(c_in, reduction=4)``
and ``ratio = 0.2``."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

import fewclip.heads.on_features.trained_module as trained_module  # its fit_module trains the head
from fewclip.backbones import CLIPBackbone
from fewclip.heads import ClipAdapterHead, Task
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task
from tests.reference.clap_trainer import (
    CASES,
    EPOCHS,
    TEMPLATES,
    YAML,
    base_text_features,
    reference_pool_orders,
    run_epochs,
    with_views,
)
from tests.reference.recording import recording


class ClipAdapterReference(nn.Module):
    """``init_clipA`` + ``forward_clipadapter``."""

    def __init__(self, base_text_features: torch.Tensor, logit_scale: float, ratio: float = 0.2) -> None:
        super().__init__()
        self.ratio, self.logit_scale = ratio, logit_scale
        self.prototypes = nn.Parameter(base_text_features.clone(), requires_grad=False)
        d = base_text_features.shape[-1]
        self.mlp = nn.Sequential(
            nn.Linear(d, d // 4, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(d // 4, d, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)
        features = self.ratio * x + (1 - self.ratio) * features
        image_features_norm = features / features.norm(dim=-1, keepdim=True)
        prototypes_norm = self.prototypes / self.prototypes.norm(dim=-1, keepdim=True)
        return image_features_norm @ prototypes_norm.t() * self.logit_scale


def test_defaults_are_the_clap_repositorys(make_config: Callable[..., Any]) -> None:
    c = make_config().clip_adapter
    assert (c.reduction, c.ratio) == (4, 0.2)
    assert (c.lr, c.epochs, c.batch_size, c.warmup_epochs, c.warmup_lr, c.weight_decay, c.momentum) == (
        YAML["LR"],
        YAML["MAX_EPOCH"],
        YAML["BATCH_SIZE"],
        YAML["WARMUP_EPOCH"],
        YAML["WARMUP_CONS_LR"],
        YAML["WEIGHT_DECAY"],
        0.9,
    )
    assert (c.prototypes, c.schedule, c.drop_last, c.view_sampling) == ("template_mean", "dassl", True, "pool")


@pytest.mark.parametrize("views,batch_size", CASES)
def test_clip_adapter_trains_as_the_clap_repository(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int, batch_size: int
) -> None:
    # the reference keeps the last epoch and fits no temperature
    config = make_config(
        f"clip_adapter.epochs={EPOCHS}",
        f"clip_adapter.batch_size={batch_size}",
        "clip_adapter.select=last",
        "clip_adapter.calibrate=false",
    ).clip_adapter
    train = with_views(cluster_task(backbone.dim, 3, seed=1), views)
    test = cluster_task(backbone.dim, 4, seed=3)
    with recording(trained_module) as record:
        head = ClipAdapterHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=2), train)

    reference = ClipAdapterReference(base_text_features(backbone, TASK_NAMES, TEMPLATES), backbone.logit_scale)
    with torch.no_grad():  # fewclip's initial draw (nn.Linear's distribution) as the reference's start
        reference.mlp[0].weight.copy_(record.initial_state["down"])
        reference.mlp[2].weight.copy_(record.initial_state["up"])
        torch.testing.assert_close(
            head.model_.prototypes,
            reference.prototypes / reference.prototypes.norm(dim=-1, keepdim=True),
            atol=1e-6,
            rtol=1e-5,
        )
    x, y, orders = reference_pool_orders(record, train)
    params = list(reference.parameters())  # Dassl's build_optimizer(model.adapter): the frozen prototypes too
    rates = run_epochs(
        params,
        reference,
        None,
        x,
        y,
        len(train),
        orders,
        batch_size,
        YAML["LR"],
        YAML["WARMUP_EPOCH"],
        YAML["WARMUP_CONS_LR"],
    )
    assert record.step_rates == pytest.approx(rates, rel=1e-12, abs=0)
    # ~10 SGD steps at lr 0.1 from inputs equal to 1e-7: the weights and logits agree to 1e-5
    torch.testing.assert_close(head.model_.down, reference.mlp[0].weight.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.model_.up, reference.mlp[2].weight.detach(), atol=1e-5, rtol=1e-5)
    assert (head.model_.up - record.initial_state["up"]).abs().max().item() > 1e-3  # they moved
    with torch.no_grad():
        torch.testing.assert_close(head.logits(test.features), reference(test.features), atol=1e-5, rtol=1e-5)
