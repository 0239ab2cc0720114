"""LP++: a task only the support set can solve, a saved head scores as the fitted one, the views it trains on, the
iteration kept without val, errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import FeatureSet, LpPpHead, Task
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task, reloaded, support_and_zero_shot_accuracy

TEMPLATES = ["a photo of a {}.", "an image of a {}."]


@pytest.fixture(scope="module")
def lp_task(tiny_clip: Path) -> Task:
    return Task(list(TASK_NAMES), TEMPLATES, load_backbone(ModelConfig(id=str(tiny_clip), device="cpu")), seed=1)


def dim(task: Task) -> int:
    assert isinstance(task.backbone, CLIPBackbone)
    return task.backbone.dim


def test_it_solves_what_zero_shot_cannot(lp_task: Task, make_config: Callable[..., Any]) -> None:
    head = LpPpHead(make_config().lp_pp)
    head_accuracy, zero_shot = support_and_zero_shot_accuracy(head, lp_task)
    assert zero_shot < 0.5 < head_accuracy
    assert len(head.history_) == 300 and head.selection_.rule == "val_accuracy"
    assert head.trainable_parameters() == len(TASK_NAMES) * (dim(lp_task) + 2)


def test_a_saved_head_scores_as_the_fitted_one(lp_task: Task, make_config: Callable[..., Any], tmp_path: Path) -> None:
    head = LpPpHead(make_config("lp_pp.epochs=30").lp_pp)
    head.fit(lp_task, cluster_task(dim(lp_task), 2, seed=1), cluster_task(dim(lp_task), 2, seed=2))
    loaded = reloaded(head, tmp_path / "lp_pp", TEMPLATES)
    test = cluster_task(dim(lp_task), 2, seed=3)
    assert torch.equal(loaded.logits(test.features), head.logits(test.features))
    assert loaded.best_epoch_ == head.best_epoch_


def test_without_val_the_last_iteration_is_kept(lp_task: Task, make_config: Callable[..., Any]) -> None:
    head = LpPpHead(make_config("lp_pp.epochs=20").lp_pp).fit(lp_task, cluster_task(dim(lp_task), 2, seed=1))
    assert head.best_epoch_ == 20 and head.selection_.rule == "last_epoch (no validation split)"
    assert "val_accuracy" not in head.history_[-1]


def test_it_trains_on_the_views_not_the_plain_features(lp_task: Task, make_config: Callable[..., Any]) -> None:
    """With views, the plain features play no part (the official code trains on one augmented view)."""
    train = cluster_task(dim(lp_task), 2, seed=1)
    noise = torch.randn(len(train), 1, dim(lp_task), generator=torch.Generator().manual_seed(4))
    views = train.features[:, None] + noise
    config = make_config("lp_pp.epochs=20").lp_pp
    with_views = LpPpHead(config).fit(lp_task, FeatureSet(train.features, train.labels, views))
    other_plain = LpPpHead(config).fit(lp_task, FeatureSet(-train.features, train.labels, views))
    on_views = LpPpHead(config).fit(lp_task, FeatureSet(views[:, 0], train.labels))
    test = cluster_task(dim(lp_task), 2, seed=3).features
    assert torch.equal(with_views.logits(test), other_plain.logits(test))
    torch.testing.assert_close(with_views.logits(test), on_views.logits(test), rtol=1e-5, atol=1e-5)


def test_a_class_without_support_images_is_named(lp_task: Task) -> None:
    train = cluster_task(dim(lp_task), 2, seed=1)
    keep = train.labels != 4
    with pytest.raises(ValueError, match="lp_pp: no support image of class\\(es\\) 'pink heart'"):
        LpPpHead().fit(lp_task, FeatureSet(train.features[keep], train.labels[keep]))


def test_no_training_features_is_an_error(lp_task: Task) -> None:
    with pytest.raises(ValueError, match="lp_pp needs training features"):
        LpPpHead().fit(lp_task)
