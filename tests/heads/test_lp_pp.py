"""LP++: a task only the support set can solve, a saved head scores as the fitted one, the views it trains on, the
iteration kept without val, errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import FeatureSet, LpPpHead, Task, ZeroShotHead, load_head, save_head
from tests.heads.adapter_tasks import TASK_NAMES, accuracy, cluster_task

TEMPLATES = ["a photo of a {}.", "an image of a {}."]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone) -> Task:
    return Task(list(TASK_NAMES), TEMPLATES, backbone, seed=1)


def test_it_solves_what_zero_shot_cannot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    train, val = cluster_task(backbone.dim, 4, seed=1), cluster_task(backbone.dim, 2, seed=2)
    test = cluster_task(backbone.dim, 10, seed=3)
    head = LpPpHead(make_config().lp_pp).fit(task(backbone), train, val)
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(test.features), test.labels)
    assert zero_shot < 0.5 < accuracy(head.predict(test.features), test.labels)
    assert len(head.history_) == 300 and head.selection_.rule == "val_accuracy"
    assert head.trainable_parameters() == len(TASK_NAMES) * (backbone.dim + 2)


def test_a_saved_head_scores_as_the_fitted_one(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path
) -> None:
    head = LpPpHead(make_config("lp_pp.epochs=30").lp_pp).fit(
        task(backbone), cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 2, seed=2)
    )
    save_head(head, tmp_path / "lp_pp", TASK_NAMES, {"templates": TEMPLATES})
    loaded, _ = load_head(tmp_path / "lp_pp")
    test = cluster_task(backbone.dim, 2, seed=3)
    assert torch.equal(loaded.logits(test.features), head.logits(test.features))
    assert loaded.best_epoch_ == head.best_epoch_


def test_without_val_the_last_iteration_is_kept(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    head = LpPpHead(make_config("lp_pp.epochs=20").lp_pp).fit(task(backbone), cluster_task(backbone.dim, 2, seed=1))
    assert head.best_epoch_ == 20 and head.selection_.rule == "last_epoch (no validation split)"
    assert "val_accuracy" not in head.history_[-1]


def test_it_trains_on_the_views_not_the_plain_features(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    """With views, the plain features play no part (the official code trains on one augmented view)."""
    train = cluster_task(backbone.dim, 2, seed=1)
    views = train.features[:, None] + torch.randn(
        len(train), 1, backbone.dim, generator=torch.Generator().manual_seed(4)
    )
    config = make_config("lp_pp.epochs=20").lp_pp
    with_views = LpPpHead(config).fit(task(backbone), FeatureSet(train.features, train.labels, views))
    other_plain = LpPpHead(config).fit(task(backbone), FeatureSet(-train.features, train.labels, views))
    on_views = LpPpHead(config).fit(task(backbone), FeatureSet(views[:, 0], train.labels))
    test = cluster_task(backbone.dim, 2, seed=3).features
    assert torch.equal(with_views.logits(test), other_plain.logits(test))
    torch.testing.assert_close(with_views.logits(test), on_views.logits(test), rtol=1e-5, atol=1e-5)


def test_a_class_without_support_images_is_named(backbone: CLIPBackbone) -> None:
    train = cluster_task(backbone.dim, 2, seed=1)
    keep = train.labels != 4
    with pytest.raises(ValueError, match="lp_pp: no support image of class\\(es\\) 'pink heart'"):
        LpPpHead().fit(task(backbone), FeatureSet(train.features[keep], train.labels[keep]))


def test_no_training_features_is_an_error(backbone: CLIPBackbone) -> None:
    with pytest.raises(ValueError, match="lp_pp needs training features"):
        LpPpHead().fit(task(backbone))
