"""The head contract every classifier follows, and its safetensors + JSON persistence.

A head is built from its config (``__init__`` only stores it), learns in ``fit`` (which returns
``self``; learned state ends in ``_``), scores with ``logits`` / ``predict`` on image features,
and round-trips through ``save`` / ``load_head``: ``<stem>.safetensors`` holds the tensors,
``<stem>.json`` the head name, its config, class names and anything else worth keeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..fileio import read_json, write_json


@dataclass
class FeatureSet:
    """Image features (n, dim) float32, unnormalised, and their labels (n,); optionally augmented views."""

    features: torch.Tensor
    labels: torch.Tensor
    views: torch.Tensor | None = None  # (n, V, dim) features of V augmented views of each image, if cached

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Task:
    """What a head may use besides features: class names, prompt templates, the frozen backbone."""

    class_names: list[str]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    backbone: Any = None  # CLIPBackbone; needed by heads that read text (zero-shot, prompt learning)
    seed: int = 0
    progress: bool = False
    shots: int = 0  # the shot budget being trained (some heads scale epochs with it)
    checkpoint: Path | None = None  # where an iterative head saves per-epoch state to resume from


class Head(Protocol):
    name: ClassVar[str]
    uses_shots: ClassVar[bool]  # False: trained once, without images (zero-shot)
    uses_text: ClassVar[bool]  # True: fit needs Task.backbone (the text tower)
    history_: list[dict[str, float]]

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "Head": ...

    def logits(self, features: torch.Tensor) -> torch.Tensor: ...

    def predict(self, features: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...

    def trainable_parameters(self) -> int: ...

    @property
    def config(self) -> Any: ...


def normalize(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def save_head(head: Head, stem: Path, class_names: Sequence[str], meta: dict[str, Any] | None = None) -> None:
    """Write ``<stem>.safetensors`` and then ``<stem>.json`` (the JSON marks a complete artifact)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    tmp = stem.with_name(stem.name + ".safetensors.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(stem.with_name(stem.name + ".safetensors"))
    write_json(
        stem.with_name(stem.name + ".json"),
        {
            "head": head.name,
            "config": head.config.model_dump(mode="json"),
            "class_names": list(class_names),
            "trainable_params": head.trainable_parameters(),
            "history": head.history_,
            "best_epoch": getattr(head, "best_epoch_", None),
            **(meta or {}),
        },
    )


def read_head_meta(stem: Path) -> dict[str, Any] | None:
    file = stem.with_name(stem.name + ".json")
    return read_json(file) if file.is_file() else None


def load_head(stem: Path) -> tuple[Head, dict[str, Any]]:
    """Rebuild a saved head (no backbone needed) and return it with its JSON metadata."""
    from . import HEADS

    meta = read_head_meta(stem)
    if meta is None:
        raise FileNotFoundError(f"{stem}.json does not exist: that head was not trained")
    head_cls = HEADS.get(meta["head"])
    head = head_cls(head_cls.Config(**meta["config"]))
    head.load_state(load_file(str(stem.with_name(stem.name + ".safetensors"))), meta)
    head.history_ = meta.get("history", [])
    return head, meta
