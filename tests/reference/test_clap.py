"""CLAP against jusiro/CLAP ``trainers/adapters.py`` (``INIT: ZS``, ``CONSTRAINT: l2``), re-implemented from
the official file: ZS-LP's start, logits and training (see ``test_zs_lp``) plus the class-adaptive penalty,
``AdapterMethod.init_lagrangian_multipliers`` (the untrained probe's softmax on the pooled training features,
averaged per class) and ``AdapterMethod.zero_shot_constraint`` (``mean(alpha * ||w - w0||^2)``)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

import fewclip.heads.on_features.trained_module as trained_module  # its fit_module trains the head
from fewclip.backbones import CLIPBackbone
from fewclip.heads import ClapHead, Task
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task
from tests.reference.clap_trainer import (
    CASES,
    EPOCHS,
    TEMPLATES,
    YAML,
    base_text_features,
    forward_lp,
    reference_pool_orders,
    run_epochs,
    with_views,
)
from tests.reference.recording import recording


def init_lagrangian_multipliers(labels_ds: torch.Tensor, logits_ds: torch.Tensor) -> torch.Tensor:
    """(C,) the zero-shot performance of each class: diag(softmax(logits).T @ one_hot) / images per class."""
    with torch.no_grad():
        labels_one_hot = nn.functional.one_hot(labels_ds)
        return torch.diag(torch.softmax(logits_ds, -1).t() @ labels_one_hot.to(torch.float32)) / labels_one_hot.sum(0)


def test_defaults_are_zs_lps(make_config: Callable[..., Any]) -> None:
    assert make_config().clap.model_dump() == make_config().zs_lp.model_dump()


@pytest.mark.parametrize("views,batch_size", CASES)
def test_clap_trains_as_the_clap_repository(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int, batch_size: int
) -> None:
    config = make_config(f"clap.epochs={EPOCHS}", f"clap.batch_size={batch_size}").clap
    train = with_views(cluster_task(backbone.dim, 3, seed=1), views)
    test = cluster_task(backbone.dim, 4, seed=3)
    with recording(trained_module) as record:
        head = ClapHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=2), train)

    base = base_text_features(backbone, TASK_NAMES, TEMPLATES)
    torch.testing.assert_close(record.initial_state["prototypes"], base, atol=1e-5, rtol=1e-5)
    prototypes = nn.Parameter(base.clone())
    forward = forward_lp(prototypes, backbone.logit_scale)
    x, y, orders = reference_pool_orders(record, train)
    with torch.no_grad():
        alpha_constraint = init_lagrangian_multipliers(y, forward(x))  # logits_zs: the pool before training
    assert alpha_constraint.min().item() > 0 and alpha_constraint.max() > 2 * alpha_constraint.min()  # per class

    def zero_shot_constraint() -> torch.Tensor:
        return torch.mean(alpha_constraint * (prototypes - base.clone()).pow(2).sum(-1))

    rates = run_epochs(
        [prototypes],
        forward,
        zero_shot_constraint,
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
    # ~10 SGD steps at lr 0.1 from inputs equal to 1e-7: the parameters and logits agree to 1e-5
    torch.testing.assert_close(head.model_.prototypes, prototypes.detach(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(head.logits(test.features), forward(test.features), atol=1e-5, rtol=1e-5)
    # the penalty changed the result: the same steps without it end elsewhere
    free = nn.Parameter(base.clone())
    run_epochs(
        [free],
        forward_lp(free, backbone.logit_scale),
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
    assert (free.detach() - prototypes.detach()).abs().max().item() > 1e-3
