"""Tip-Adapter-F against gaopengcuhk/Tip-Adapter ``main.py`` ``run_tip_adapter_F``, re-implemented from the
official file: the cache keys as the weight of a bias-free ``nn.Linear`` (raw rows, not renormalised while
training), AdamW (lr 1e-3, eps 1e-4, torch's defaults otherwise), ``CosineAnnealingLR(optimizer, train_epoch *
len(train_loader_F))`` stepped after every batch, ``train_loader_F`` shuffled with ``drop_last=False``
(``datasets/utils.py`` ``build_data_loader``), cross-entropy of ``run_tip_adapter``'s logits at the initial alpha
and beta, then ``utils.py`` ``search_hp`` with the trained adapter. The reference picks its epoch on test; here
both keep the last epoch (``select: last``)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fewclip.heads.on_features.tip_adapter_f as tip_adapter_f_module
from fewclip.backbones import CLIPBackbone
from fewclip.heads import FeatureSet, Task, TipAdapterFHead
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task
from tests.reference.recording import FitRecord, recording
from tests.reference.test_tip_adapter import (
    IMAGENET_YAML,
    TEMPLATES,
    augmented_passes,
    build_cache_model,
    clip_classifier,
    normalized,
    search_hp,
    tip_logits,
)


IMAGENET_F = {"lr": 0.001, "train_epoch": 20, "batch_size": 256, "eps": 1e-4}  # configs/imagenet.yaml, main.py
EPOCHS = 3


def train_tip_adapter_f(
    cache_keys: torch.Tensor,
    cache_values: torch.Tensor,
    clip_weights: torch.Tensor,
    scale: float,
    record: FitRecord,
    batch_size: int,
    lr: float,
) -> tuple[nn.Linear, list[float]]:
    """``run_tip_adapter_F``'s training loop; each epoch's images in fewclip's shuffle (``record``), batched by a
    loader with ``drop_last=False``. Returns the adapter and the learning rate of every step."""
    adapter = nn.Linear(cache_keys.shape[0], cache_keys.shape[1], bias=False)
    adapter.weight = nn.Parameter(cache_keys.t().clone())
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr, eps=IMAGENET_F["eps"])
    n_images = len(record.epochs[0].labels)
    loader_length = len(torch.utils.data.DataLoader(range(n_images), batch_size=batch_size, drop_last=False))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, len(record.epochs) * loader_length)
    beta, alpha = IMAGENET_YAML["init_beta"], IMAGENET_YAML["init_alpha"]
    rates = []
    for epoch in record.epochs:  # epoch.features: this epoch's image features (one augmented view each)
        loader = torch.utils.data.DataLoader(
            range(n_images), batch_size=batch_size, sampler=epoch.order.tolist(), drop_last=False
        )
        for index in loader:
            image_features = normalized(epoch.features[index])
            affinity = adapter(image_features)
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
            clip_logits = scale * image_features @ clip_weights
            loss = F.cross_entropy(clip_logits + cache_logits * alpha, epoch.labels[index])
            optimizer.zero_grad()
            loss.backward()
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    return adapter, rates


def test_defaults_are_the_references(make_config: Callable[..., Any]) -> None:
    c = make_config().tip_adapter_f
    assert (c.lr, c.epochs, c.batch_size, c.eps, c.weight_decay) == (
        IMAGENET_F["lr"],
        IMAGENET_F["train_epoch"],
        IMAGENET_F["batch_size"],
        IMAGENET_F["eps"],
        torch.optim.AdamW([nn.Parameter(torch.zeros(1))]).defaults["weight_decay"],
    )
    assert (c.alpha, c.beta, c.anneal) == (IMAGENET_YAML["init_alpha"], IMAGENET_YAML["init_beta"], "per_step")


# 18 support images in batches of 8: 8, 8 and a last partial batch of 2 the reference trains on
@pytest.mark.parametrize("views", [0, 3])
def test_tip_adapter_f_trains_as_the_reference(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int
) -> None:
    batch_size, lr = 8, 0.01  # lr 10x the default so that 9 steps move the keys visibly
    config = make_config(
        f"tip_adapter_f.epochs={EPOCHS}",
        f"tip_adapter_f.batch_size={batch_size}",
        f"tip_adapter_f.lr={lr}",
        "tip_adapter_f.select=last",
        "tip_adapter_f.calibrate=false",
        "tip_adapter_f.search_steps_beta=40",
        "tip_adapter_f.search_steps_alpha=10",
    ).tip_adapter_f
    train = cluster_task(backbone.dim, 3, seed=1, noise=1.5)
    if views:
        noise = torch.randn(len(train), views, backbone.dim, generator=torch.Generator().manual_seed(7))
        train = FeatureSet(train.features, train.labels, train.features[:, None] + 0.5 * noise)
    val, test = cluster_task(backbone.dim, 4, seed=2, noise=1.5), cluster_task(backbone.dim, 4, seed=3)
    with recording(tip_adapter_f_module) as record:
        head = TipAdapterFHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=2), train, val)

    for epoch in record.epochs:  # each epoch trains on one augmented view of every image, in image order
        assert torch.equal(epoch.labels, train.labels) and len(epoch.batches) == 3
        if views:
            assert all(any(torch.equal(row, view) for view in image) for row, image in zip(epoch.features, train.views))
    cache_keys, cache_values = build_cache_model(augmented_passes(train), train.labels)
    clip_weights = clip_classifier(backbone, TASK_NAMES, TEMPLATES)
    adapter, rates = train_tip_adapter_f(
        cache_keys, cache_values, clip_weights, backbone.logit_scale, record, batch_size, lr
    )
    assert len(rates) == EPOCHS * 3
    assert record.step_rates == pytest.approx(rates, rel=1e-9, abs=1e-15)  # every step's own cosine rate
    # 9 AdamW steps from inputs equal to 1e-7 (Adam's steps are ~lr whatever the gradient's size): 1e-5
    torch.testing.assert_close(head.model_.keys, adapter.weight.detach(), atol=1e-5, rtol=1e-5)
    assert (head.model_.keys - cache_keys.T).abs().max().item() > 1e-2  # they moved
    # then search_hp on val with the trained adapter
    val_features = normalized(val.features)
    with torch.no_grad():
        val_affinity = adapter(val_features)
        best_beta, best_alpha = search_hp(
            {**IMAGENET_YAML, "search_step": [40, 10]},
            lambda alpha, beta: tip_logits(
                val_features, cache_keys, cache_values, clip_weights, backbone.logit_scale, alpha, beta, val_affinity
            ),
            val.labels,
        )
        assert (head.alpha_, head.beta_) == (best_alpha, best_beta)
        test_features = normalized(test.features)
        expected = tip_logits(
            test_features,
            cache_keys,
            cache_values,
            clip_weights,
            backbone.logit_scale,
            best_alpha,
            best_beta,
            adapter(test_features),
        )
    torch.testing.assert_close(head.logits(test.features), expected, atol=1e-5, rtol=1e-5)
