"""ZS-LP against jusiro/CLAP ``trainers/adapters.py`` (``INIT: ZS``, ``CONSTRAINT: none``), re-implemented in
``clap_trainer`` from the official files: the prototypes' start (``_get_base_text_features``), the logits
(``CustomCLIP.forward_lp``), and training (``TrainerXCostume.run_epoch`` with Dassl's SGD and warm-up + cosine
from ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``), given fewclip's shuffles."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

import fewclip.heads.on_features.trained_module as trained_module  # its fit_module trains the head
from fewclip.backbones import CLIPBackbone
from fewclip.heads import Task, ZsLpHead
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
    train_loader_batches,
    with_views,
)
from tests.reference.recording import recording


def test_defaults_are_the_clap_repositorys(make_config: Callable[..., Any]) -> None:
    c = make_config().zs_lp
    assert (c.lr, c.epochs, c.batch_size, c.warmup_epochs, c.warmup_lr, c.weight_decay, c.momentum) == (
        YAML["LR"],
        YAML["MAX_EPOCH"],
        YAML["BATCH_SIZE"],
        YAML["WARMUP_EPOCH"],
        YAML["WARMUP_CONS_LR"],
        YAML["WEIGHT_DECAY"],
        0.9,
    )
    assert (c.prototypes, c.schedule, c.drop_last, c.view_sampling, c.select, c.calibrate) == (
        "template_mean",
        "dassl",
        True,
        "pool",
        "last",
        False,
    )


@pytest.mark.parametrize("views,batch_size", CASES)
def test_zs_lp_trains_as_the_clap_repository(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int, batch_size: int
) -> None:
    config = make_config(f"zs_lp.epochs={EPOCHS}", f"zs_lp.batch_size={batch_size}").zs_lp
    train = with_views(cluster_task(backbone.dim, 3, seed=1), views)
    test = cluster_task(backbone.dim, 4, seed=3)
    with recording(trained_module) as record:
        head = ZsLpHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=2), train)

    base = base_text_features(backbone, TASK_NAMES, TEMPLATES)
    # the start is _get_base_text_features (text encoded in other batch shapes: last-bit differences)
    torch.testing.assert_close(record.initial_state["prototypes"], base, atol=1e-5, rtol=1e-5)
    prototypes = nn.Parameter(base.clone())
    forward = forward_lp(prototypes, backbone.logit_scale)
    x, y, orders = reference_pool_orders(record, train)
    assert len(orders) == EPOCHS and all(
        len(e.batches) == train_loader_batches(len(train), batch_size) for e in record.epochs
    )
    rates = run_epochs(
        [prototypes],
        forward,
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
    assert record.step_rates == pytest.approx(rates, rel=1e-12, abs=0)  # every step at Dassl's rate of its epoch
    # ~10 SGD steps at lr 0.1 from inputs equal to 1e-7: the parameters and logits agree to 1e-5
    torch.testing.assert_close(head.model_.prototypes, prototypes.detach(), atol=1e-5, rtol=1e-5)
    assert (head.model_.prototypes - base).abs().max().item() > 1e-2  # they moved
    with torch.no_grad():
        torch.testing.assert_close(head.logits(test.features), forward(test.features), atol=1e-5, rtol=1e-5)
