"""The learning rate of each epoch: constant warm-up, then cosine annealing.

Two schedules differ only in the span the cosine anneals over:

``dassl`` (the reference CoOp/CoCoOp code): Dassl's ``build_lr_scheduler`` wraps
``CosineAnnealingLR(optimizer, T_max=max_epoch)`` in a ``ConstantWarmupScheduler`` (``WARMUP_RECOUNT``
true, so the cosine starts counting after the warm-up) and the trainer steps it once, after the last batch
of each epoch. Epoch ``e`` (0-based) of ``E`` with ``W`` warm-up epochs therefore trains at ``warmup_lr``
for ``e < W`` and at ``lr * (1 + cos(pi * (e - W) / E)) / 2`` after: the cosine spans all ``E`` epochs,
so the last epoch never reaches 0, and with ``E <= W`` every epoch is a warm-up epoch.

``fewclip`` (fewclip's schedule before it followed Dassl): the cosine spans the ``E - W`` epochs after
the warm-up, ``lr * (1 + cos(pi * (e - W) / max(E - W, 1))) / 2``.

Tip-Adapter-F anneals per optimiser step instead (``lr_at_step``): gaopengcuhk/Tip-Adapter ``main.py``
``run_tip_adapter_F`` builds ``CosineAnnealingLR(optimizer, train_epoch * len(train_loader_F))`` and steps it
after every batch, so step ``t`` of ``T`` trains at ``lr * (1 + cos(pi * t / T)) / 2``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")
Schedule = Literal["dassl", "fewclip"]
SCHEDULE_HELP = (
    "Cosine after the constant warm-up: 'dassl' anneals over all epochs as the reference CoOp code "
    "(epoch e of E at lr*(1+cos(pi*(e-W)/E))/2, e 0-based, W warm-up epochs); 'fewclip' anneals over "
    "the E-W epochs after the warm-up (fewclip's earlier default)."
)


def check_epochs(epochs: int | dict[int, int]) -> int | dict[int, int]:
    """``epochs`` if it is >= 1, or a non-empty mapping {shots >= 1: epochs >= 1}; a ValueError otherwise."""
    pairs = epochs.items() if isinstance(epochs, dict) else [(1, epochs)]
    if not pairs or any(shots < 1 or count < 1 for shots, count in pairs):
        raise ValueError("epochs must be >= 1, or a non-empty mapping {shots >= 1: epochs >= 1}")
    return epochs


# A config's epochs: one count, or {shots: epochs} per shot budget (``epochs_for`` reads it)
EpochsByShots = Annotated[int | dict[int, int], AfterValidator(check_epochs)]


def for_shots(per_budget: dict[int, T], shots: int) -> T:
    """A setting's value at a shot budget from {shots: value}: an unlisted budget takes the largest listed one below
    it; below the smallest, the smallest."""
    below = [k for k in per_budget if k <= shots]
    return per_budget[max(below) if below else min(per_budget)]


def epochs_for(epochs: int | dict[int, int], shots: int) -> int:
    """The epochs of a shot budget: one count, or ``for_shots`` of {shots: epochs}."""
    return epochs if isinstance(epochs, int) else for_shots(epochs, shots)


def lr_at_epoch(
    epoch: int, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float, schedule: Schedule = "fewclip"
) -> float:
    """The learning rate epoch ``epoch`` (0-based) of ``epochs`` trains at."""
    if epoch < warmup_epochs:
        return warmup_lr
    span = epochs if schedule == "dassl" else max(epochs - warmup_epochs, 1)
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def schedules_agree(epochs: int, warmup_epochs: int) -> bool:
    """Whether ``dassl`` and ``fewclip`` train every epoch at the same rate: without warm-up, or when at
    most one epoch follows it (its rate is ``lr`` under both)."""
    return warmup_epochs == 0 or epochs - warmup_epochs <= 1


def lr_at_step(step: int, steps: int, lr: float) -> float:
    """The learning rate optimiser step ``step`` (0-based) of ``steps`` trains at: a cosine from ``lr`` towards 0
    with no warm-up, as torch's ``CosineAnnealingLR(T_max=steps)`` stepped after every batch."""
    return 0.5 * lr * (1 + math.cos(math.pi * step / steps))
