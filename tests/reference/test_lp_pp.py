"""LP++ against FereshteShakeri/FewShot-CLIP-Strong-Baseline, re-implemented here from reading the official files
(not copied): ``methods/linear_probe_p2.py`` (``calculate_lr_alpha``, ``calculate_init_alpha``, ``calculate_lr_w``
and ``LinearProbe_P2.forward``: an ``nn.Linear`` classifier whose weight is ``compute_centroids``' class sums, the
alpha row vector broadcast by ``ones(N, 1) @ alpha_vec``, SGD with momentum 0.9 on the classifier, alpha stepped
every 10 iterations by its never-zeroed gradient, the test logits kept at every val accuracy ``>=`` the best);
``methods/utils.py`` (``compute_centroids``, ``compute_centroids_alpha``, ``get_one_hot``); ``utils.py``
``clip_classifier``; ``configs/base.yaml`` (``train_epoch`` 300). Written as the official code is, in float64 where
it uses the CLIP model's dtype; numpy's ``eigh`` stands for scipy's (not installed here); the classifier's bias is
the head's seeded draw of ``nn.Linear``'s default, which the official code draws from the global torch stream."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewclip.backbones import CLIPBackbone
from fewclip.heads import FeatureSet, LpPpHead, Task
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task
from tests.reference.test_gda import TEMPLATES, clip_classifier

SEED = 3


def get_one_hot(y_s: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``methods/utils.py`` ``get_one_hot``: (batch, n) -> (batch, n, K)."""
    one_hot = torch.zeros(y_s.shape + (num_classes,), dtype=torch.float64)
    return one_hot.scatter_(-1, y_s.unsqueeze(-1), 1)


def compute_centroids_alpha(z_s: torch.Tensor, y_s: torch.Tensor) -> torch.Tensor:
    one_hot = get_one_hot(y_s, num_classes=y_s.unique().size(0))
    return (one_hot * z_s / one_hot.sum(-2, keepdim=True)).sum(1)


def compute_centroids(z_s: torch.Tensor, y_s: torch.Tensor) -> torch.Tensor:
    one_hot = get_one_hot(y_s, num_classes=y_s.unique().size(0)).transpose(1, 2)
    return one_hot.bmm(z_s)


def calculate_lr_alpha(features: torch.Tensor, clip_weights: torch.Tensor) -> float:
    ftT = features @ clip_weights
    temp = torch.sum(torch.pow(ftT, 2), dim=0)
    return float(features.shape[0] / (max(temp) * 4))


def calculate_init_alpha(features: torch.Tensor, labels: torch.Tensor, shots: int, clip_weights: torch.Tensor) -> Any:
    alpha_tilde = compute_centroids_alpha((features @ clip_weights).unsqueeze(0), labels.unsqueeze(0))[0]
    alpha_tilde = alpha_tilde.double() * shots
    alpha_init = 250 / shots * alpha_tilde
    return torch.mean(alpha_init)


def calculate_lr_w(features: torch.Tensor) -> float:
    ff_t = features.T @ features
    w, _ = np.linalg.eigh(ff_t.numpy())
    return float((4 * features.shape[0]) / max(w))


def linear_probe_p2(
    features: torch.Tensor,
    labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    test_features: torch.Tensor,
    text_weights: torch.Tensor,
    shot: int,
    bias: torch.Tensor,
    epochs: int = 300,
) -> tuple[torch.Tensor, int]:
    """``LinearProbe_P2.forward`` on normalised float64 features: (the test logits it keeps, their iteration)."""
    n_classes = int(features.shape[0] / shot)
    centroids = compute_centroids(features.unsqueeze(0), labels.unsqueeze(0))
    classifier = nn.Linear(features.shape[1], n_classes, bias=True).double()
    classifier.weight.data = centroids[0]
    classifier.bias.data = bias.clone()
    lr_temp = calculate_lr_w(features)
    final_init_alpha_mean = calculate_init_alpha(features, labels, shot, text_weights)
    alpha_vec = (final_init_alpha_mean * torch.ones(1, n_classes, dtype=torch.float64)).requires_grad_(True)
    lr_alpha = calculate_lr_alpha(features, text_weights)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_temp, momentum=0.9)
    best_acc, best_epoch, kept = 0.0, 0, torch.empty(0)
    for epoch in range(epochs):
        vision_logits = classifier(features)
        text_logits = features @ text_weights
        logits = vision_logits + torch.ones(features.shape[0], 1, dtype=torch.float64) @ alpha_vec * text_logits
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            assert alpha_vec.grad is not None
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        with torch.no_grad():
            logits_val = classifier(val_features) + torch.ones(
                len(val_features), 1, dtype=torch.float64
            ) @ alpha_vec * (val_features @ text_weights)
            acc_val = np.mean(logits_val.argmax(dim=1).numpy() == val_labels.numpy()) * 100.0
            if acc_val >= best_acc:
                best_acc, best_epoch = acc_val, epoch
                kept = classifier(test_features) + torch.ones(
                    len(test_features), 1, dtype=torch.float64
                ) @ alpha_vec * (test_features @ text_weights)
    return kept, best_epoch + 1


def normalised(features: torch.Tensor) -> torch.Tensor:
    features = features.double()
    return features / features.norm(dim=-1, keepdim=True)


def nn_linear_bias(n_classes: int, dim: int, seed: int) -> torch.Tensor:
    """``nn.Linear``'s default bias, uniform(-1/sqrt(d), 1/sqrt(d)), drawn as the head draws it."""
    bound = 1 / math.sqrt(dim)
    return (torch.rand(n_classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1) * bound


def one_view(train: FeatureSet) -> FeatureSet:
    noise = torch.randn(len(train), 1, train.features.shape[1], generator=torch.Generator().manual_seed(7))
    return FeatureSet(train.features, train.labels, train.features[:, None] + 0.5 * noise)


def test_defaults_are_the_official_files(make_config: Callable[..., Any]) -> None:
    c = make_config().lp_pp
    assert (c.epochs, c.momentum, c.alpha_every, c.alpha_init_scale, c.augment_views) == (300, 0.9, 10, 250.0, 1)
    assert c.select == "val_accuracy"


@pytest.mark.parametrize("views", [0, 1])
def test_lp_pp_logits_and_iteration_are_the_references(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int
) -> None:
    config = make_config("lp_pp.calibrate=false").lp_pp
    shots = 4
    train = cluster_task(backbone.dim, shots, seed=1, noise=1.5)
    train = one_view(train) if views else train
    val, test = cluster_task(backbone.dim, 3, seed=4, noise=5.0), cluster_task(backbone.dim, 4, seed=5, noise=1.5)
    head = LpPpHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=SEED), train, val)

    plain = train.features if train.views is None else train.views[:, 0]
    text_weights = clip_classifier(backbone, TASK_NAMES, TEMPLATES).double()
    expected, epoch = linear_probe_p2(
        normalised(plain),
        train.labels,
        normalised(val.features),
        val.labels,
        normalised(test.features),
        text_weights,
        shots,
        nn_linear_bias(len(TASK_NAMES), backbone.dim, SEED),
    )
    assert head.best_epoch_ == epoch
    # float64 in both, over 300 momentum steps: agreement to 1e-6 of the logits' scale
    torch.testing.assert_close(
        head.logits(test.features).double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())
    )


def test_the_iteration_is_chosen_on_val_and_alpha_moves(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    """The scenario above is not trivially the last iteration, nor alpha its start (the test can fail)."""
    config = make_config("lp_pp.calibrate=false").lp_pp
    train = cluster_task(backbone.dim, 4, seed=1, noise=1.5)
    val = cluster_task(backbone.dim, 3, seed=4, noise=5.0)  # noisy: its accuracy peaks mid-way
    head = LpPpHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=SEED), train, val)
    assert 10 < head.best_epoch_ < config.epochs
    text = clip_classifier(backbone, TASK_NAMES, TEMPLATES).double()
    start = float(calculate_init_alpha(normalised(train.features), train.labels, 4, text))
    assert (head.alpha_.double() - start).abs().min() > 1e-3
