"""The prompt learners' learning-rate schedule against Dassl's scheduler (re-written here on torch's own
CosineAnnealingLR, stepped as Dassl's trainer steps it), the training loop's use of it, and the unit and
checkpoint keys, which change only where a rate does."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from fewclip.heads import FeatureSet
from fewclip.training.features_loop import FeatureTrainSettings, run_key, train_on_features


class ConstantWarmup(LRScheduler):
    """Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py): ``warmup_epoch`` epochs at
    ``cons_lr``, then every step is the successor's."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int, cons_lr: float
    ) -> None:
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def dassl_rates(epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> list[float]:
    """The rate of each epoch as Dassl trains: build_lr_scheduler's cosine (T_max = max_epoch) wrapped in the
    constant warm-up (WARMUP_RECOUNT true), stepped once after each epoch's last batch (CoOp's update_lr)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler: LRScheduler = CosineAnnealingLR(optimizer, float(epochs))
    if warmup_epochs > 0:
        scheduler = ConstantWarmup(optimizer, scheduler, warmup_epochs, warmup_lr)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])  # the rate every batch of this epoch steps with
        optimizer.step()
        scheduler.step()
    return rates


def coop_settings(make_config: Callable[..., Any], *overrides: str) -> FeatureTrainSettings:
    return make_config(*overrides).coop.settings(16)


@pytest.mark.parametrize("epochs", [1, 2, 5, 50])
def test_default_schedule_is_dassls(make_config: Callable[..., Any], epochs: int) -> None:
    settings = coop_settings(make_config, f"coop.epochs={epochs}")
    assert (settings.schedule, settings.warmup_epochs, settings.warmup_lr, settings.lr) == ("dassl", 1, 1e-5, 0.002)
    expected = dassl_rates(epochs, 0.002, 1, 1e-5)
    ours = [settings.lr_at(epoch) for epoch in range(epochs)]
    assert ours == pytest.approx(expected, rel=1e-12, abs=0)
    # the closed form: epoch e (0-based, after the warm-up epoch) at lr * (1 + cos(pi * (e-1) / E)) / 2
    assert ours[1:] == pytest.approx(
        [0.001 * (1 + math.cos(math.pi * (e - 1) / epochs)) for e in range(1, epochs)], rel=1e-12
    )


@pytest.mark.parametrize("warmup", [0, 2])
def test_dassl_schedule_with_other_warmups(make_config: Callable[..., Any], warmup: int) -> None:
    settings = coop_settings(make_config, "coop.epochs=7", f"coop.warmup_epochs={warmup}", "coop.warmup_lr=0.0003")
    assert [settings.lr_at(e) for e in range(7)] == pytest.approx(dassl_rates(7, 0.002, warmup, 3e-4), rel=1e-12)


def test_fewclip_schedule_anneals_over_the_epochs_after_warmup(make_config: Callable[..., Any]) -> None:
    settings = coop_settings(make_config, "coop.epochs=5", "coop.schedule=fewclip")
    ours = [settings.lr_at(e) for e in range(5)]
    # torch's cosine over the 4 epochs after the warm-up epoch
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.002)
    cosine = CosineAnnealingLR(optimizer, 4.0)
    after = []
    for _ in range(4):
        after.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cosine.step()
    assert ours == pytest.approx([1e-5] + after, rel=1e-12)
    assert ours != pytest.approx(dassl_rates(5, 0.002, 1, 1e-5), rel=1e-6)  # the two schedules differ here


def test_schedule_error_names_the_choices(make_config: Callable[..., Any]) -> None:
    with pytest.raises(Exception, match=r"coop\.schedule.*'dassl'.*'fewclip'"):
        make_config("coop.schedule=cosine")


def test_training_loop_steps_at_dassls_rates(make_config: Callable[..., Any]) -> None:
    settings = coop_settings(make_config, "coop.epochs=5", "coop.batch_size=4")
    module = nn.Linear(3, 2)
    data = FeatureSet(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.arange(2).repeat(4))
    history, _, _ = train_on_features(module, module, data, None, 2, settings, seed=0)
    assert [row["lr"] for row in history] == pytest.approx(dassl_rates(5, 0.002, 1, 1e-5), rel=1e-12)


# --- keys: a unit retrains only where its rates (or its prompt tokens) changed ----------------------


def old_key_values(block: Any) -> dict[str, Any]:
    """A block's values as fewclip hashed them before ``schedule`` existed."""
    return {k: v for k, v in block.model_dump(mode="json").items() if k != "schedule"}


@pytest.mark.parametrize("method", ["coop", "cocoop", "kgcoop", "prograd"])
def test_unit_key_changes_only_where_the_rates_do(make_config: Callable[..., Any], method: str) -> None:
    names = ["red circle", "green square"]
    block = getattr(make_config(f"{method}.epochs=50"), method)
    assert block.key_values(names) == {**old_key_values(block), "schedule": "dassl"}
    pinned = getattr(make_config(f"{method}.epochs=50", f"{method}.schedule=fewclip"), method)
    assert pinned.key_values(names) == old_key_values(pinned)  # the earlier default: its units keep their key
    # rates the same under both: without warm-up, or one epoch after it
    for overrides in ([f"{method}.warmup_epochs=0"], [f"{method}.epochs=2"], [f"{method}.epochs={{1: 1, 2: 2}}"]):
        same = getattr(make_config(*overrides), method)
        assert same.key_values(names) == old_key_values(same), overrides
    mixed = getattr(make_config(f"{method}.epochs={{1: 2, 16: 50}}"), method)
    assert mixed.key_values(names)["schedule"] == "dassl"


def test_unit_key_marks_names_ending_in_punctuation(make_config: Callable[..., Any]) -> None:
    block = make_config("coop.schedule=fewclip").coop
    assert "name_tokens" not in block.key_values(["red circle", "U.S. flag", "Mr. Potato", "route 66"])
    for name in ("e.g.", "cat!", "what?  ", "c++"):
        assert block.key_values(["red circle", name])["name_tokens"] == "with period", name


def test_checkpoint_key_keeps_its_value_where_the_rates_do() -> None:
    module = nn.Linear(3, 2)
    data = FeatureSet(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
    fewclip = FeatureTrainSettings(50, 4, 0.002, 0.9, 5e-4, 1, 1e-5, "fewclip")
    later = ("schedule", "drop_last", "views", "per_step", "constant_lr")  # keys added after the first checkpoints
    assert fewclip.key_values() == {k: v for k, v in vars(fewclip).items() if k not in later}
    assert run_key(module, FeatureTrainSettings(**{**vars(fewclip), "drop_last": True}), 0, 2, data, None) != run_key(
        module, fewclip, 0, 2, data, None
    )
    per_step = FeatureTrainSettings(**{**vars(fewclip), "warmup_epochs": 0, "per_step": True})
    assert run_key(module, per_step, 0, 2, data, None) != run_key(
        module, FeatureTrainSettings(**{**vars(per_step), "per_step": False}), 0, 2, data, None
    )
    constant = FeatureTrainSettings(**{**vars(fewclip), "warmup_epochs": 0, "constant_lr": True})
    assert run_key(module, constant, 0, 2, data, None) != run_key(
        module, FeatureTrainSettings(**{**vars(constant), "constant_lr": False}), 0, 2, data, None
    )
    dassl = FeatureTrainSettings(**{**vars(fewclip), "schedule": "dassl"})
    assert run_key(module, dassl, 0, 2, data, None) != run_key(module, fewclip, 0, 2, data, None)
    short = FeatureTrainSettings(**{**vars(dassl), "epochs": 2})
    short_fewclip = FeatureTrainSettings(**{**vars(short), "schedule": "fewclip"})
    assert run_key(module, short, 0, 2, data, None) == run_key(module, short_fewclip, 0, 2, data, None)
