"""Shared helpers for the adapter heads' tests: a task zero-shot cannot solve, counting kills."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.heads import FeatureSet, Task, ZeroShotHead, load_head, save_head

# six classes: more classes make zero-shot weaker
TASK_NAMES = ["red circle", "green square", "blue triangle", "yellow star", "pink heart", "grey moon"]


class Killed(Exception):
    """Stands in for the process being killed at a chosen point."""


def cluster_task(dim: int, per_class: int, seed: int, noise: float = 0.5, classes: int = len(TASK_NAMES)) -> FeatureSet:
    """Image features = a fixed random centre per class (unrelated to any text) plus noise: the support
    set tells the classes apart, the class names do not."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(321))
    labels = torch.arange(classes).repeat(per_class)
    jitter = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return FeatureSet(centres[labels] + noise * jitter, labels)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item()


def support_and_zero_shot_accuracy(head: Any, task: Task) -> tuple[float, float]:
    """(the head's test accuracy, zero-shot's) after fitting ``head`` on 4 images per class (val: 2) of the
    cluster task, which the class names cannot solve."""
    assert task.backbone is not None
    dim = task.backbone.dim
    head.fit(task, cluster_task(dim, 4, seed=1), cluster_task(dim, 2, seed=2))
    test = cluster_task(dim, 10, seed=3)
    zero_shot = ZeroShotHead().fit(task).predict(test.features)
    return accuracy(head.predict(test.features), test.labels), accuracy(zero_shot, test.labels)


def reloaded(head: Any, stem: Path, templates: list[str]) -> Any:
    """``head`` saved to ``stem`` with its templates and loaded back."""
    save_head(head, stem, TASK_NAMES, {"templates": templates})
    loaded, _ = load_head(stem)
    return loaded


class CallCounter:
    """Counts calls of ``owner.attr``; raises Killed at call number ``fail_at`` when it is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, attr: str, fail_at: int | None = None) -> None:
        self.count, self.fail_at = 0, fail_at
        original: Callable[..., Any] = getattr(owner, attr)

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            if self.count == self.fail_at:
                raise Killed(f"killed at call {self.count}")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attr, counting)

    def restart(self) -> None:
        self.count, self.fail_at = 0, None
