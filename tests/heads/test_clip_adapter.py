"""CLIP-Adapter: ratio 0 is zero-shot, the adapter formula, a task only an adapted feature solves, resume
after a kill, parameter count, transfer to new class names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import ClipAdapterHead, Task, ZeroShotHead, normalize
from fewclip.heads.on_features.clip_adapter import AdapterModel
from tests.heads.adapter_tasks import TASK_NAMES, CallCounter, Killed, accuracy, cluster_task

TEMPLATES = ["a photo of a {}.", "an image of a {}."]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone, seed: int = 0, checkpoint: Path | None = None, names: list[str] = TASK_NAMES) -> Task:
    return Task(names, TEMPLATES, backbone, seed, checkpoint=checkpoint)


def mean_template_classifier(backbone: CLIPBackbone, names: list[str] = TASK_NAMES) -> torch.Tensor:
    """(C, d) the normalised mean raw template embedding of each class (the reference's prototypes)."""
    raw = backbone.encode_text([t.format(n) for t in TEMPLATES for n in names]).reshape(len(TEMPLATES), len(names), -1)
    return normalize(raw.mean(0))


def test_ratio_zero_is_zero_shot_exactly(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    config = make_config("clip_adapter.ratio=0", "clip_adapter.epochs=3", "clip_adapter.calibrate=false").clip_adapter
    train, test = cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 5, seed=3)
    # one template: exactly zero-shot
    one = Task(TASK_NAMES, TEMPLATES[:1], backbone, 0)
    head = ClipAdapterHead(config).fit(one, train)
    zero_shot = ZeroShotHead().fit(one).logits(test.features)
    assert (head.logits(test.features) - zero_shot).abs().max().item() <= 1e-5
    assert zero_shot.std().item() > 0.1
    # several: the unadapted cosine against the mean raw template embeddings (jusiro/CLAP's prototypes)
    head = ClipAdapterHead(config).fit(task(backbone), train)
    expected = backbone.logit_scale * normalize(test.features) @ mean_template_classifier(backbone).T
    assert (head.logits(test.features) - expected).abs().max().item() <= 1e-5
    # prototypes: zero_shot scores against the zero-shot ensemble: exactly zero-shot
    config = make_config(
        "clip_adapter.ratio=0",
        "clip_adapter.epochs=3",
        "clip_adapter.calibrate=false",
        "clip_adapter.prototypes=zero_shot",
    ).clip_adapter
    head = ClipAdapterHead(config).fit(task(backbone), train)
    zero_shot = ZeroShotHead().fit(task(backbone)).logits(test.features)
    assert (head.logits(test.features) - zero_shot).abs().max().item() <= 1e-5
    assert (expected - zero_shot).abs().max().item() > 1e-3  # the two classifiers differ with two templates


def test_adapted_feature_follows_the_formula(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    config = make_config("clip_adapter.epochs=2", "clip_adapter.calibrate=false").clip_adapter
    train, test = cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 3, seed=3)
    head = ClipAdapterHead(config).fit(task(backbone), train)
    down, up = head.model_.down, head.model_.up
    assert down.shape == (backbone.dim // 4, backbone.dim) and up.shape == (backbone.dim, backbone.dim // 4)
    f = test.features
    adapted = 0.2 * torch.relu(torch.relu(f @ down.T) @ up.T) + 0.8 * f
    expected = backbone.logit_scale * normalize(adapted) @ mean_template_classifier(backbone).T
    assert (head.logits(f) - expected).abs().max().item() <= 1e-4
    assert head.trainable_parameters() == 2 * backbone.dim * (backbone.dim // 4)


def test_clip_adapter_beats_zero_shot_and_transfers(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    train, val, test = (cluster_task(backbone.dim, k, seed=s) for k, s in ((4, 1), (4, 2), (10, 3)))
    config = make_config("clip_adapter.epochs=60", "clip_adapter.ratio=0.6").clip_adapter
    head = ClipAdapterHead(config).fit(task(backbone), train, val)
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(test.features), test.labels)
    learned = accuracy(head.predict(test.features), test.labels)
    assert learned > zero_shot + 0.3, (learned, zero_shot)
    assert head.history_[-1]["train_loss"] < head.history_[0]["train_loss"]
    # transfer: the same adapter against the prototypes of other names
    names = ["blue circle", "red square"]
    moved = head.transfer(backbone, names)
    torch.testing.assert_close(moved.model_.prototypes, mean_template_classifier(backbone, names), atol=1e-6, rtol=1e-5)
    assert torch.equal(moved.model_.down, head.model_.down) and moved.logits(test.features).shape == (len(test), 2)


def test_clip_adapter_resumes_a_killed_fit(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("clip_adapter.epochs=4", "clip_adapter.batch_size=4").clip_adapter
    train, val = cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 2, seed=2)
    reference = ClipAdapterHead(config).fit(task(backbone, seed=4), train, val)
    per_epoch = 3 + 1  # 12 images in batches of 4, then one val pass
    calls = CallCounter(monkeypatch, AdapterModel, "forward", fail_at=2 * per_epoch + 2)
    checkpoint = tmp_path / "clip_adapter.ckpt.safetensors"
    with pytest.raises(Killed):
        ClipAdapterHead(config).fit(task(backbone, seed=4, checkpoint=checkpoint), train, val)
    calls.restart()
    resumed = ClipAdapterHead(config).fit(task(backbone, seed=4, checkpoint=checkpoint), train, val)
    assert calls.count == 2 * per_epoch + 1  # epochs 3 and 4, then the calibration pass
    assert resumed.history_ == reference.history_
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
