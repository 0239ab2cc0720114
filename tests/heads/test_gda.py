"""GDA: alpha 0 is zero-shot, a task only the support set can solve, transfer from a saved head, errors that
name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import FeatureSet, GdaHead, Task, ZeroShotHead, load_head, save_head
from tests.heads.adapter_tasks import TASK_NAMES, accuracy, cluster_task

TEMPLATES = ["a photo of a {}.", "an image of a {}."]
NEW_NAMES = ["orange oval", "purple cross", "white ring"]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone, names: list[str] = TASK_NAMES) -> Task:
    return Task(list(names), TEMPLATES, backbone, seed=1)


def test_alpha_zero_is_zero_shot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    config = make_config("gda.search=false", "gda.alpha=0", "gda.calibrate=false").gda
    train, test = cluster_task(backbone.dim, 3, seed=1), cluster_task(backbone.dim, 4, seed=3)
    head = GdaHead(config).fit(task(backbone), train)
    zero_shot = ZeroShotHead().fit(task(backbone)).logits(test.features)
    torch.testing.assert_close(head.logits(test.features), zero_shot, atol=1e-5, rtol=1e-5)


def test_the_search_finds_an_alpha_that_solves_what_zero_shot_cannot(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train, val = cluster_task(backbone.dim, 4, seed=1), cluster_task(backbone.dim, 2, seed=2)
    test = cluster_task(backbone.dim, 10, seed=3)
    head = GdaHead(make_config().gda).fit(task(backbone), train, val)
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(test.features), test.labels)
    assert zero_shot < 0.5 < accuracy(head.predict(test.features), test.labels)
    assert head.alpha_ in make_config().gda.alphas and "searched on 12 val images" in head.search_note_


def test_without_val_alpha_is_the_configs(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    head = GdaHead(make_config("gda.alpha=3").gda).fit(task(backbone), cluster_task(backbone.dim, 2, seed=1))
    assert head.alpha_ == 3.0 and head.search_note_ == "fixed: no validation split to search on"


def test_every_view_is_a_sample(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    train = cluster_task(backbone.dim, 2, seed=1)
    views = train.features[:, None] + torch.randn(
        len(train), 3, backbone.dim, generator=torch.Generator().manual_seed(4)
    )
    head = GdaHead(make_config().gda).fit(task(backbone), FeatureSet(train.features, train.labels, views))
    expected = views.reshape(-1, backbone.dim) / views.reshape(-1, backbone.dim).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(head.support_, expected)


def test_a_saved_head_transfers_as_the_fitted_one(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path
) -> None:
    head = GdaHead(make_config().gda).fit(
        task(backbone), cluster_task(backbone.dim, 4, seed=1), cluster_task(backbone.dim, 2, seed=2)
    )
    save_head(head, tmp_path / "gda", TASK_NAMES, {"templates": TEMPLATES})
    loaded, _ = load_head(tmp_path / "gda")
    test = cluster_task(backbone.dim, 2, seed=3, classes=len(NEW_NAMES))
    fitted_new, loaded_new = head.transfer(backbone, NEW_NAMES), loaded.transfer(backbone, NEW_NAMES)
    assert torch.equal(loaded_new.logits(test.features), fitted_new.logits(test.features))
    assert fitted_new.logits(test.features).shape == (len(test), len(NEW_NAMES))
    assert fitted_new.alpha_ == head.alpha_ and torch.equal(fitted_new.temperature_, head.temperature_)
    zero_shot_new = ZeroShotHead().fit(task(backbone, NEW_NAMES)).logits(test.features)
    assert (fitted_new.uncalibrated_logits(test.features) - zero_shot_new).abs().max() > 1e-3  # the GDA part counts


def test_a_class_without_support_images_is_named(backbone: CLIPBackbone) -> None:
    train = cluster_task(backbone.dim, 2, seed=1)
    keep = train.labels != 4
    with pytest.raises(ValueError, match="no support image of class\\(es\\) 'pink heart'"):
        GdaHead().fit(task(backbone), FeatureSet(train.features[keep], train.labels[keep]))


def test_the_pooled_estimator_asks_for_two_samples_per_class(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    head = GdaHead(make_config("gda.estimator=pooled").gda)
    with pytest.raises(ValueError, match="'pooled' needs at least two samples of every class.*gda.estimator=ks"):
        head.fit(task(backbone), cluster_task(backbone.dim, 1, seed=1))
