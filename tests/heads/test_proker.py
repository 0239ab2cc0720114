"""ProKeR: a task only the support set can solve, a saved head scores as the fitted one, the fixed values without
val, errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import FeatureSet, ProkerHead, Task, ZeroShotHead
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task, reloaded, support_and_zero_shot_accuracy

TEMPLATES = ["a photo of a {}.", "an image of a {}."]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone, shots: int = 4) -> Task:
    return Task(list(TASK_NAMES), TEMPLATES, backbone, seed=1, shots=shots)


def test_the_search_solves_what_zero_shot_cannot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    head = ProkerHead(make_config().proker)
    head_accuracy, zero_shot = support_and_zero_shot_accuracy(head, task(backbone))
    assert zero_shot < 0.5 < head_accuracy
    assert "searched on 12 val images" in head.search_note_
    assert head.beta_ in torch.linspace(0.5, 3.0, 20).tolist() and head.lmbda_ in torch.linspace(0.001, 1, 10).tolist()


def test_a_saved_head_scores_as_the_fitted_one(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path
) -> None:
    head = ProkerHead(make_config("proker.augment_views=0").proker)
    head.fit(task(backbone, 2), cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 2, seed=2))
    loaded = reloaded(head, tmp_path / "proker", TEMPLATES)
    test = cluster_task(backbone.dim, 2, seed=3)
    assert torch.equal(loaded.logits(test.features), head.logits(test.features))
    assert (loaded.beta_, loaded.lmbda_) == (head.beta_, head.lmbda_)


@pytest.mark.parametrize("shots,expected", [(1, (3.0, 0.05)), (3, (2.6, 0.05)), (32, (1.7, 0.1))])
def test_without_val_the_shot_budgets_values(
    backbone: CLIPBackbone, make_config: Callable[..., Any], shots: int, expected: tuple[float, float]
) -> None:
    head = ProkerHead(make_config().proker).fit(task(backbone, shots), cluster_task(backbone.dim, 2, seed=1))
    assert (head.beta_, head.lmbda_) == expected and head.search_note_ == "fixed: no validation split to search on"


def test_a_strong_regularisation_is_zero_shot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    """lambda -> 0 keeps the function at zero-shot (the proximal term): the cosines, without CLIP's logit scale."""
    config = make_config("proker.search=false", "proker.calibrate=false", "proker.fixed={4: [1.0, 1e-9]}").proker
    head = ProkerHead(config).fit(task(backbone), cluster_task(backbone.dim, 2, seed=1))
    zero_shot = ZeroShotHead().fit(task(backbone))
    test = cluster_task(backbone.dim, 2, seed=3).features
    torch.testing.assert_close(head.logits(test), zero_shot.logits(test) / zero_shot.logit_scale_, atol=1e-6, rtol=1e-5)


def test_bad_grids_and_labels_are_refused(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="a grid is \\[first > 0, last > 0, count >= 1\\]"):
        make_config("proker.beta_grid=[0, 3, 20]")
    train = cluster_task(backbone.dim, 2, seed=1)
    with pytest.raises(ValueError, match="proker: a support label is 6 but the task has 6 classes"):
        ProkerHead().fit(task(backbone), FeatureSet(train.features, train.labels + 1))
    with pytest.raises(ValueError, match="proker needs training features"):
        ProkerHead().fit(task(backbone))
