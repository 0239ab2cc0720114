"""What the training loops' per-epoch checkpoints share (the loop on cached features, the loop on images,
captioning's): the optimiser's state and the kept best epoch as named tensors, and reading a checkpoint back only
when it is this run's and undamaged."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from fewclip.heads.artifacts import DamagedArtifact, read_tensors
from fewclip.training.selection import BestEpoch, SelectRule

log = logging.getLogger(__name__)


def training_tensors(
    model: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, best: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """What every loop's checkpoint holds as tensors: the trained state as ``model.<name>``, the optimiser's
    (``optimizer_tensors``) and the best epoch's state so far as ``best.<name>``."""
    tensors = {f"model.{k}": v for k, v in model.items()} | optimizer_tensors(optimizer)
    return tensors | {f"best.{k}": v for k, v in (best or {}).items()}


def saved_part(tensors: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The tensors ``training_tensors`` saved under ``part`` ("model" or "best"), by their own names."""
    prefix = part + "."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state (momentum buffers, Adam moments and steps) as ``optim.<index>.<name>``
    tensors on the CPU."""
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().clone()
    return tensors


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict[str, Any]] | None = None
) -> None:
    """Load the state ``optimizer_tensors`` saved into ``optimizer`` (a fresh one, built as the saved one was), with
    ``param_groups`` as saved when given, else the optimiser's own."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, field = name.split(".", 2)
            state.setdefault(int(index), {})[field] = value
    groups = param_groups if param_groups is not None else optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def best_metadata(keeper: BestEpoch) -> dict[str, Any]:
    """What a checkpoint's JSON keeps of ``keeper``: its epoch and score."""
    return {"best_epoch": keeper.epoch, "best_score": list(keeper.score) if keeper.score is not None else None}


def restored_best(select: SelectRule, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> BestEpoch:
    """The ``BestEpoch`` a checkpoint saved (the best state ``training_tensors`` keeps and ``best_metadata``); a fresh one if it held none."""
    if meta["best_epoch"] is None:
        return BestEpoch(select)
    return BestEpoch(
        select,
        meta["best_epoch"],
        tuple(meta["best_score"]),
        saved_part(tensors, "best"),
    )


def read_checkpoint(
    path: Path,
    key: str,
    what: str = "checkpoint",
    delete_damaged: bool = True,
    changed: str = "settings, data or initialisation",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, metadata) of the checkpoint at ``path`` when it belongs to this run (its ``run_key`` is ``key``);
    None when there is none, when it is another run's (``changed`` says what may differ), or when it is damaged:
    then it is deleted (``delete_damaged``; a torchrun job's other ranks leave that to rank 0) with a warning, and
    training starts over."""
    if not path.is_file():
        return None
    try:
        tensors, metadata = read_tensors(path, what=what)
        meta = json.loads(metadata.get("fewclip", "{}"))
    except (DamagedArtifact, ValueError) as err:  # ValueError: metadata that is not JSON
        log.warning(
            "discarding checkpoint %s: %s; training this unit starts over",
            path,
            err.reason if isinstance(err, DamagedArtifact) else f"unreadable metadata ({err})",
        )
        if delete_damaged:
            path.unlink(missing_ok=True)
        return None
    if not isinstance(meta, dict) or meta.get("run_key") != key:
        log.info("ignoring checkpoint %s: it belongs to another run (%s changed)", path, changed)
        return None
    return tensors, meta
