"""Shared helpers for the adapter heads' tests: a task zero-shot cannot solve, counting kills."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from fewclip.heads import FeatureSet

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
