"""Tip-Adapter and Tip-Adapter-F: reductions to zero-shot and to each other, the reference's search,
augmented-view keys, a task only the cache can solve, resuming a killed fine-tuning, parameter counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import (
    FeatureSet,
    Task,
    TipAdapterFHead,
    TipAdapterHead,
    ZeroShotHead,
    load_head,
    normalize,
    save_head,
)
from fewclip.training.selection import Selection
from fewclip.heads.on_features.tip_adapter import CacheModel, search_grid
from tests.heads.adapter_tasks import TASK_NAMES, CallCounter, Killed, accuracy, cluster_task


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone, seed: int = 0, checkpoint: Path | None = None) -> Task:
    return Task(TASK_NAMES, ["a photo of a {}.", "an image of a {}."], backbone, seed, checkpoint=checkpoint)


def test_alpha_zero_is_zero_shot_exactly(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    config = make_config("tip_adapter.search=false", "tip_adapter.alpha=0").tip_adapter
    train, test = cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 5, seed=3)
    head = TipAdapterHead(config).fit(task(backbone), train)
    zero_shot = ZeroShotHead().fit(task(backbone)).logits(test.features)
    assert (head.uncalibrated_logits(test.features) - zero_shot).abs().max().item() <= 1e-5
    assert zero_shot.std().item() > 0.1
    other = TipAdapterHead(make_config("tip_adapter.search=false").tip_adapter).fit(task(backbone), train)
    assert (other.uncalibrated_logits(test.features) - zero_shot).abs().max().item() > 0.1  # alpha 1.17 moves them


def test_cache_logits_follow_the_formula(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    train, test = cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 3, seed=3)
    head = TipAdapterHead(make_config("tip_adapter.search=false", "tip_adapter.calibrate=false").tip_adapter)
    head.fit(task(backbone), train)
    keys = train.features / train.features.norm(dim=-1, keepdim=True)
    x = test.features / test.features.norm(dim=-1, keepdim=True)
    values = torch.eye(len(TASK_NAMES))[train.labels]
    expected = (
        ZeroShotHead().fit(task(backbone)).logits(test.features) + 1.17 * torch.exp(-1.0 * (1 - x @ keys.T)) @ values
    )
    assert (head.logits(test.features) - expected).abs().max().item() <= 1e-4


def test_keys_average_the_cached_augmented_views(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    train = cluster_task(backbone.dim, 2, seed=1)
    views = torch.randn(len(train), 3, backbone.dim, generator=torch.Generator().manual_seed(5))
    head = TipAdapterHead(make_config("tip_adapter.search=false").tip_adapter)
    head.fit(task(backbone), FeatureSet(train.features, train.labels, views))
    expected = views.mean(dim=1) / views.mean(dim=1).norm(dim=-1, keepdim=True)
    assert (head.model_.keys - expected).abs().max().item() <= 1e-6


def reference_search(
    model: CacheModel, val: FeatureSet, scales: tuple[float, float], steps: tuple[int, int]
) -> tuple[float, float]:
    """The reference's search_hp loop, transcribed: strict improvement of val accuracy, beta-major."""
    beta_list = [i * (scales[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alpha_list = [i * (scales[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    best_acc, best = 0.0, (0.0, 0.0)
    features = normalize(val.features)
    with torch.no_grad():
        for beta in beta_list:
            for alpha in alpha_list:
                cache = torch.exp(-(beta - beta * (features @ model.keys.T))) @ model.values
                acc = ((model.clip_logits(val.features) + cache * alpha).argmax(-1) == val.labels).float().mean().item()
                if acc > best_acc:
                    best_acc, best = acc, (alpha, beta)
    return best


def test_search_picks_what_the_reference_loop_picks_on_val(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    assert search_grid(7, 200)[:2] == [0.1, 0.1 + 6.9 / 200] and len(search_grid(3, 20)) == 20
    config = make_config("tip_adapter.search_steps_beta=40", "tip_adapter.search_steps_alpha=10").tip_adapter
    train, val = cluster_task(backbone.dim, 1, seed=1, noise=1.5), cluster_task(backbone.dim, 4, seed=2, noise=1.5)
    head = TipAdapterHead(config).fit(task(backbone), train, val)
    alpha, beta = reference_search(head.model_, val, (7, 3), (40, 10))
    assert head.alpha_ == pytest.approx(alpha, abs=1e-6) and head.beta_ == pytest.approx(beta, abs=1e-9)
    assert (head.alpha_, head.beta_) != (1.17, 1.0)
    # no validation split: the initial values are kept
    untuned = TipAdapterHead(config).fit(task(backbone), train)
    assert (untuned.alpha_, untuned.beta_) == (1.17, 1.0)


def test_tip_adapter_beats_zero_shot_on_a_task_only_the_cache_solves(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train, val, test = (cluster_task(backbone.dim, k, seed=s) for k, s in ((2, 1), (4, 2), (10, 3)))
    head = TipAdapterHead(make_config().tip_adapter).fit(task(backbone), train, val)
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(test.features), test.labels)
    learned = accuracy(head.predict(test.features), test.labels)
    assert learned >= 0.75 and learned > zero_shot + 0.4, (learned, zero_shot)
    assert head.trainable_parameters() == 0


# --- Tip-Adapter-F -----------------------------------------------------------------------------------


def test_untrained_tip_adapter_f_is_tip_adapter(
    backbone: CLIPBackbone, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "fewclip.heads.on_features.tip_adapter_f.train_on_features",
        lambda *args, **kwargs: ([], Selection(0, "untrained"), {}),
    )
    train, val, test = (cluster_task(backbone.dim, k, seed=s, noise=1.5) for k, s in ((1, 1), (4, 2), (5, 3)))
    tip = TipAdapterHead(make_config().tip_adapter).fit(task(backbone), train, val)
    tip_f = TipAdapterFHead(make_config().tip_adapter_f).fit(task(backbone), train, val)
    assert (tip_f.alpha_, tip_f.beta_) == (tip.alpha_, tip.beta_)
    assert (tip_f.logits(test.features) - tip.logits(test.features)).abs().max().item() <= 1e-5


def test_tip_adapter_f_trains_the_keys_and_beats_zero_shot(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train, val, test = (cluster_task(backbone.dim, k, seed=s, noise=1.0) for k, s in ((2, 1), (4, 2), (10, 3)))
    head = TipAdapterFHead(make_config("tip_adapter_f.lr=0.01").tip_adapter_f).fit(task(backbone), train, val)
    assert len(head.history_) == 20 and head.history_[-1]["train_loss"] < head.history_[0]["train_loss"]
    initial = train.features / train.features.norm(dim=-1, keepdim=True)
    assert (head.model_.keys - initial).abs().max().item() > 1e-3  # the keys moved
    assert head.trainable_parameters() == len(train) * backbone.dim == 12 * backbone.dim
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(test.features), test.labels)
    assert accuracy(head.predict(test.features), test.labels) > zero_shot + 0.4


def test_tip_adapter_f_resumes_a_killed_fit(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("tip_adapter_f.epochs=4", "tip_adapter_f.batch_size=4", "tip_adapter_f.lr=0.01").tip_adapter_f
    train, val = cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 2, seed=2)
    reference = TipAdapterFHead(config).fit(task(backbone, seed=4), train, val)
    per_epoch = 3 + 1  # 12 images in batches of 4, then one val pass
    calls = CallCounter(monkeypatch, CacheModel, "forward", fail_at=2 * per_epoch + 2)
    checkpoint = tmp_path / "tip_adapter_f.ckpt.safetensors"
    with pytest.raises(Killed):
        TipAdapterFHead(config).fit(task(backbone, seed=4, checkpoint=checkpoint), train, val)
    assert checkpoint.is_file()
    calls.restart()
    resumed = TipAdapterFHead(config).fit(task(backbone, seed=4, checkpoint=checkpoint), train, val)
    assert calls.count == 2 * per_epoch + 1  # epochs 3 and 4, then the calibration pass
    assert resumed.history_ == reference.history_
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_saved_tip_adapter_f_round_trips(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path
) -> None:
    train, val, test = (cluster_task(backbone.dim, k, seed=s) for k, s in ((2, 1), (2, 2), (3, 3)))
    head = TipAdapterFHead(make_config("tip_adapter_f.epochs=2").tip_adapter_f).fit(task(backbone), train, val)
    save_head(head, tmp_path / "shot_2-seed_1", TASK_NAMES)
    loaded, meta = load_head(tmp_path / "shot_2-seed_1")
    assert torch.equal(loaded.logits(test.features), head.logits(test.features))
    assert (loaded.alpha_, loaded.beta_) == (head.alpha_, head.beta_)
    assert meta["trainable_params"] == 12 * backbone.dim and len(meta["history"]) == 2
