"""TaskRes: an untrained residual is zero-shot, it learns what zero-shot cannot, its default per-shot epochs
survive a save and load, a killed fit resumes to the same head."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import Task, TaskResHead, ZeroShotHead, load_head, save_head
from fewclip.training import features_loop
from tests.heads.adapter_tasks import TASK_NAMES, CallCounter, Killed, accuracy, cluster_task

ONE_TEMPLATE = ["a photo of a {}."]  # one template: the raw mean has the zero-shot prototype's direction


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone, shots: int = 4, checkpoint: Path | None = None) -> Task:
    return Task(TASK_NAMES, ONE_TEMPLATE, backbone, seed=1, shots=shots, checkpoint=checkpoint)


def test_a_zero_scaled_residual_is_zero_shot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    config = make_config("taskres.residual_scale=0", "taskres.epochs=2").taskres
    test = cluster_task(backbone.dim, 4, seed=3)
    head = TaskResHead(config).fit(task(backbone), cluster_task(backbone.dim, 2, seed=1))
    zero_shot = ZeroShotHead().fit(task(backbone)).logits(test.features)
    torch.testing.assert_close(head.logits(test.features), zero_shot, atol=1e-5, rtol=1e-5)


def test_the_residual_learns_what_zero_shot_cannot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    # 100 Adam steps (4 shots: one batch an epoch) at lr 2e-3 move the residual rows ~0.5, against class text
    # embeddings of norm ~4.4 in the tiny model (measured: 32% accuracy); at 2e-2 they move ~3.8 (100%)
    train, test = cluster_task(backbone.dim, 4, seed=1), cluster_task(backbone.dim, 10, seed=3)
    head = TaskResHead(make_config("taskres.lr=0.02").taskres).fit(task(backbone, shots=4), train)
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(test.features), test.labels)
    assert len(head.history_) == 100  # the 4-shot budget's epochs
    assert zero_shot < 0.5 < accuracy(head.predict(test.features), test.labels)
    assert head.trainable_parameters() == len(TASK_NAMES) * backbone.dim


def test_the_default_config_survives_save_and_load(backbone: CLIPBackbone, tmp_path: Path) -> None:
    head = TaskResHead().fit(task(backbone, shots=1), cluster_task(backbone.dim, 1, seed=1))
    save_head(head, tmp_path / "taskres", TASK_NAMES, {"templates": ONE_TEMPLATE})
    loaded, meta = load_head(tmp_path / "taskres")
    assert loaded.config == head.config and loaded.config.epochs_for(16) == 200  # {shots: epochs} keys as numbers
    test = cluster_task(backbone.dim, 2, seed=3).features
    assert torch.equal(loaded.logits(test), head.logits(test)) and meta["best_epoch"] == 100


def test_a_killed_fit_resumes_to_the_same_head(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("taskres.epochs=6", "taskres.batch_size=8").taskres
    train, test = cluster_task(backbone.dim, 3, seed=1), cluster_task(backbone.dim, 2, seed=3).features
    whole = TaskResHead(config).fit(task(backbone), train)
    counter = CallCounter(monkeypatch, features_loop, "epoch_batches", fail_at=4)  # killed as epoch 4 starts
    with pytest.raises(Killed):
        TaskResHead(config).fit(task(backbone, checkpoint=tmp_path / "ckpt.safetensors"), train)
    counter.restart()
    resumed = TaskResHead(config).fit(task(backbone, checkpoint=tmp_path / "ckpt.safetensors"), train)
    assert counter.count == 3  # epochs 4-6 only
    assert torch.equal(resumed.logits(test), whole.logits(test)) and resumed.history_ == whole.history_
