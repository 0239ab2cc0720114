"""What an equivalence test takes from a fewclip fit to give the reference the same start and draws: the trained
module's initial state, each epoch's shuffled order (and drawn features), and the rate of every optimiser step.

Nothing here computes anything the reference computes; it only watches the shared loop
(``fewclip.training.features_loop``) while a head fits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import fewclip.training.features_loop as loop


@dataclass
class EpochDraw:
    """One epoch as fewclip drew it: the rows it trained on (m, d), their labels, the permutation of them
    (m,) that its batches are cut from, and the batches themselves."""

    features: torch.Tensor
    labels: torch.Tensor
    order: torch.Tensor
    batches: list[torch.Tensor]


@dataclass
class FitRecord:
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict)
    epochs: list[EpochDraw] = field(default_factory=list)
    step_rates: list[float] = field(default_factory=list)  # the learning rate of every optimiser step
    first_grads: dict[str, torch.Tensor] = field(default_factory=dict)  # each parameter's gradient at the first step


@contextmanager
def recording(head_module: ModuleType) -> Iterator[FitRecord]:
    """Record the fits run inside the block of a head whose ``train_on_features`` call is in ``head_module``."""
    record = FitRecord()
    active: list[Any] = [False, None]  # fitting, and the module being trained
    train = head_module.train_on_features
    draw = loop.epoch_batches

    def training(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        record.initial_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        active[:] = [True, module]
        try:
            return train(module, *args, **kwargs)
        finally:
            active[:] = [False, None]

    def drawing(data: Any, settings: Any, generator: torch.Generator) -> Any:
        state = generator.get_state()
        x, y, batches = draw(data, settings, generator)
        replay = torch.Generator()
        replay.set_state(state)  # the epoch's first draw is its permutation of all m rows
        order = torch.randperm(len(y), generator=replay)
        assert torch.equal(torch.cat(batches), order[: sum(len(b) for b in batches)]), "batches are cut from the order"
        record.epochs.append(EpochDraw(x.clone(), y.clone(), order, batches))
        return x, y, batches

    def step_hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if active[0]:
            record.step_rates.append(optimizer.param_groups[0]["lr"])
            if not record.first_grads:
                record.first_grads = {
                    name: p.grad.detach().clone() for name, p in active[1].named_parameters() if p.grad is not None
                }

    handle = register_optimizer_step_pre_hook(step_hook)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(head_module, "train_on_features", training)
            patch.setattr(loop, "epoch_batches", drawing)
            yield record
    finally:
        handle.remove()
