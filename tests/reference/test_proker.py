"""ProKeR against the official code (ybendou/ProKeR, read at commit f2ecb3d of omarnust/BReg-Adapter, whose history
to that commit is its author's), re-implemented here from reading the official files (not copied): ``trainers/proker.py``
(``RBF_Kernel``; ``ProKeR``: the one-hot cache minus the shots' text logits, the ``linspace`` grids of beta (outer)
and lambda with a strict improvement of ``cls_acc``, ``torch.linalg.solve(1/lmbda K_SS + I, ...)``, the test logits
``text + K_XS alpha``); ``main.py`` ``run`` (the shots: every augmented pass, L2-normalised, pass after pass);
``utils.py`` ``cls_acc`` and ``get_clip_weights`` (as ``clip_classifier``); ``configs/RN50/configs_proker/*.yaml``
(the grid) and ``hyperparameters.json`` (the values without a search). Written as the official code is, in
float32."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from fewclip.backbones import CLIPBackbone
from fewclip.heads import ProkerHead, Task
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task
from tests.reference.test_gda import TEMPLATES, clip_classifier, cls_acc, parameter_estimation, support

GRID = {"beta": [0.5, 3, 20], "lmbda": [0.001, 1, 10]}  # caltech101.yaml, fgvc.yaml, food101.yaml, ucf101.yaml
HYPERPARAMETERS = {  # hyperparameters.json
    "1": {"beta": 3, "lmbda": 0.05},
    "2": {"beta": 2.6, "lmbda": 0.05},
    "4": {"beta": 1.5, "lmbda": 0.05},
    "8": {"beta": 1.66, "lmbda": 0.07},
    "16": {"beta": 1.7, "lmbda": 0.1},
}


def RBF_Kernel(X: torch.Tensor, Y: torch.Tensor, beta: Any) -> torch.Tensor:
    return (-beta * (1 - X.float() @ Y.float().T)).exp()


def proker(
    vecs: torch.Tensor,
    labels: torch.Tensor,
    val_features: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    test_features: torch.Tensor,
    clip_weights: torch.Tensor,
    shots: int,
) -> tuple[torch.Tensor, float, float]:
    """``ProKeR`` (the grid search when val is given, else ``hyperparameters.json``): (test logits, beta, lambda)."""
    n_classes = len(labels.unique())
    cache = F.one_hot(labels, num_classes=n_classes).float()
    logits_text_shots = torch.einsum("sd, cd -> sc", vecs.float(), clip_weights.float().T)
    if val_features is not None and val_labels is not None:
        best_val_acc = 0.0
        logits_text_val = torch.einsum("bd, cd -> bc", val_features.float(), clip_weights.float().T)
        beta_search = torch.linspace(float(GRID["beta"][0]), float(GRID["beta"][1]), GRID["beta"][2])
        lmbda_search = torch.linspace(float(GRID["lmbda"][0]), float(GRID["lmbda"][1]), GRID["lmbda"][2])
        for beta in beta_search:
            K_SS = RBF_Kernel(vecs[:], vecs[:], beta=beta)
            K_XS = RBF_Kernel(val_features, vecs[:], beta=beta)
            for lmbda in lmbda_search:
                alpha_i = torch.linalg.solve(1 / lmbda * K_SS + torch.eye(vecs.size(0)), cache - logits_text_shots)
                val_logits = logits_text_val + K_XS @ alpha_i
                acc = cls_acc(val_logits, val_labels)
                if acc > best_val_acc:
                    best_val_acc, best_lmbda, best_beta = acc, lmbda, beta
        best_beta, best_lmbda = best_beta.item(), best_lmbda.item()
    else:
        best_hp = HYPERPARAMETERS[str(shots)]
        best_beta, best_lmbda = best_hp["beta"], best_hp["lmbda"]
    K_SS = RBF_Kernel(vecs[:], vecs[:], beta=best_beta)
    alpha_i = torch.linalg.solve(1 / best_lmbda * K_SS + torch.eye(vecs.size(0)), cache - logits_text_shots)
    K_XS = RBF_Kernel(test_features, vecs[:], beta=best_beta)
    logits_text_test = torch.einsum("bd, cd -> bc", test_features.float(), clip_weights.float().T)
    return logits_text_test + K_XS @ alpha_i, float(best_beta), float(best_lmbda)


def normalised(features: torch.Tensor) -> torch.Tensor:
    """``pre_load_features``' normalisation of the val and test features."""
    return features / features.norm(dim=-1, keepdim=True)


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # a float32 solve (the reference) against float64 (the head): agreement to 1e-4 of the logits' scale
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_defaults_are_the_official_ones(make_config: Callable[..., Any]) -> None:
    c = make_config().proker
    assert (list(c.beta_grid), list(c.lmbda_grid)) == (GRID["beta"], GRID["lmbda"])
    assert {str(k): {"beta": b, "lmbda": m} for k, (b, m) in c.fixed.items()} == HYPERPARAMETERS
    assert (c.search, c.augment_views) == (True, 10)  # main.py's --augment-epoch default


@pytest.mark.parametrize("views", [0, 3])
def test_the_search_and_logits_are_the_references(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int
) -> None:
    config = make_config("proker.calibrate=false").proker
    train, val = support(backbone.dim, 4, views), cluster_task(backbone.dim, 3, seed=2, noise=3.0)
    test = cluster_task(backbone.dim, 4, seed=3)
    head = ProkerHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, shots=4), train, val)
    vecs, labels = parameter_estimation(train)
    clip_weights = clip_classifier(backbone, TASK_NAMES, TEMPLATES)
    expected, beta, lmbda = proker(
        vecs, labels, normalised(val.features), val.labels, normalised(test.features), clip_weights, 4
    )
    assert (head.beta_, head.lmbda_) == pytest.approx((beta, lmbda))
    assert (beta, lmbda) != (0.5, 0.001)  # the search moved off the grid's first pair
    assert_logits_close(head.logits(test.features), expected)


@pytest.mark.parametrize("shots", [1, 16])
def test_without_val_the_values_are_hyperparameters_json(
    backbone: CLIPBackbone, make_config: Callable[..., Any], shots: int
) -> None:
    config = make_config("proker.calibrate=false").proker
    train, test = support(backbone.dim, 2, 0), cluster_task(backbone.dim, 4, seed=3)
    head = ProkerHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, shots=shots), train)
    vecs, labels = parameter_estimation(train)
    clip_weights = clip_classifier(backbone, TASK_NAMES, TEMPLATES)
    expected, beta, lmbda = proker(vecs, labels, None, None, normalised(test.features), clip_weights, shots)
    assert (head.beta_, head.lmbda_) == (beta, lmbda)
    assert_logits_close(head.logits(test.features), expected)
    # the regression moves the prediction: the test is not passing on the zero-shot logits alone
    zero_shot = normalised(test.features) @ clip_weights
    assert not torch.equal(expected.argmax(-1), zero_shot.argmax(-1))
