"""The shared epoch-selection rule: it falls back to the last epoch when val cannot separate epochs,
says which rule chose, and the heads keep exactly the state it names."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable

import pytest
import torch

from fewclip.heads import FeatureSet, LinearProbeHead, Task
from fewclip.training.selection import MIN_VAL_PER_CLASS, BestEpoch, Selection, fit_meta, select_epoch
from fewclip.stats import wilson_interval

CLASSES = ["a", "b", "c"]


def history(accuracy: list[float], f1: list[float] | None = None, loss: list[float] | None = None) -> list[dict]:
    f1 = f1 or accuracy
    loss = loss or [1.0] * len(accuracy)
    return [
        {"epoch": float(i + 1), "train_loss": 1.0, "val_accuracy": a, "val_macro_f1": f, "val_loss": v}
        for i, (a, f, v) in enumerate(zip(accuracy, f1, loss))
    ]


def labels(per_class: int, n_classes: int = 3) -> torch.Tensor:
    return torch.arange(n_classes).repeat(per_class)


def test_tied_curve_on_a_small_val_falls_back_to_the_last_epoch() -> None:
    """4 val images per class: every epoch ties at the first, as in the runs that kept epoch 1."""
    tied = history([0.5] * 5, loss=[0.9, 1.0, 1.1, 1.2, 1.3])
    assert select_epoch("auto", tied, labels(4), 3) == Selection(5, "last_epoch (val too small: 4/class < 10)")
    # the old rule kept the first of the tied epochs: its val loss is the lowest
    assert select_epoch("val_macro_f1", tied, labels(4), 3) == Selection(1, "val_macro_f1")


def test_the_smallest_class_decides_whether_val_is_too_small() -> None:
    imbalanced = torch.tensor([0] * 20 + [1] * 20 + [2] * 9)
    rule = select_epoch("auto", history([0.9, 0.2, 0.2]), imbalanced, 3).rule
    assert rule == f"last_epoch (val too small: 9/class < {MIN_VAL_PER_CLASS})"
    missing_class = torch.tensor([0, 1] * 20)  # class 2 has no val image at all
    assert select_epoch("auto", history([0.9, 0.2]), missing_class, 3).rule.startswith("last_epoch (val too small: 0/")


def test_flat_curve_on_a_large_val_keeps_the_last_epoch() -> None:
    """10 per class (30 images): epoch 2 beats the last by one image, well inside the noise."""
    flat = history([20 / 30, 24 / 30, 23 / 30])
    selection = select_epoch("auto", flat, labels(10), 3)
    low, high = wilson_interval(24, 30)
    assert selection.epoch == 3
    assert selection.rule == (
        f"last_epoch (val flat: epoch 2 val accuracy 0.800, last 0.767, 95% Wilson interval "
        f"[{low:.3f}, {high:.3f}] on 30 images)"
    )


def test_clearly_better_epoch_on_a_large_val_is_kept() -> None:
    peaked = history([0.5, 27 / 30, 0.5], loss=[1.0, 0.5, 1.2])
    selection = select_epoch("auto", peaked, labels(10), 3)
    assert selection.epoch == 2 and selection.rule.startswith("val_macro_f1 (epoch 2 val accuracy 0.900, last 0.500")
    best_last = history([0.5, 0.6, 0.9])
    assert select_epoch("auto", best_last, labels(10), 3) == Selection(3, "val_macro_f1 (the last epoch is the best)")


def test_explicit_rules_and_no_validation() -> None:
    curve = history([0.4, 0.6, 0.6, 0.5], loss=[1.0, 0.8, 0.7, 0.65])
    assert select_epoch("val_macro_f1", curve, labels(2), 3) == Selection(3, "val_macro_f1")  # tie -> lower loss
    assert select_epoch("val_loss", curve, labels(2), 3) == Selection(4, "val_loss")
    assert select_epoch("last", curve, labels(2), 3) == Selection(4, "last_epoch")
    no_val = [{"epoch": 1.0, "train_loss": 1.0}, {"epoch": 2.0, "train_loss": 0.5}]
    for rule in ("auto", "val_macro_f1", "val_loss"):
        assert select_epoch(rule, no_val, None, 3) == Selection(2, "last_epoch (no validation split)")


def test_wilson_interval_matches_its_definition() -> None:
    """The interval is the set of p with (p_hat - p)^2 <= z^2 p (1 - p) / n: check its ends solve it."""
    z = NormalDist().inv_cdf(0.975)
    for successes, n in ((24, 30), (0, 12), (12, 12), (7, 100)):
        low, high = wilson_interval(successes, n)
        p_hat = successes / n
        for end in (low, high):
            if 0 < end < 1:
                assert (p_hat - end) ** 2 == pytest.approx(z * z * end * (1 - end) / n, abs=1e-12)
        assert low <= p_hat <= high
    assert wilson_interval(24, 30) == pytest.approx((0.627, 0.905), abs=1e-3)  # the textbook value


# --- the heads keep what the rule names -----------------------------------------------------------


def anti_val(seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """Val = the training images with other labels: every epoch of learning makes val worse."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(30) % 3
    x = 3 * torch.eye(16)[y] + 0.3 * torch.randn(30, 16, generator=generator)
    return FeatureSet(x, y), FeatureSet(x.clone(), (y + 1) % 3)


def test_linear_probe_records_a_first_epoch_selection(make_config: Callable[..., Any]) -> None:
    train, val = anti_val()
    head = LinearProbeHead(make_config("linear_probe.select=val_loss").linear_probe).fit(
        Task(CLASSES, seed=1), train, val
    )
    losses = [row["val_loss"] for row in head.history_]
    assert losses.index(min(losses)) == 0  # precondition: the first epoch is the best on val loss
    assert head.selection_ == Selection(1, "val_loss") and head.best_epoch_ == 1
    meta = fit_meta(head)
    assert meta["kept_first_epoch"] is True and meta["selection_rule"] == "val_loss"
    # auto on the same run: 10 val images per class and the last epoch is clearly worse -> the first is kept
    auto = LinearProbeHead(make_config().linear_probe).fit(Task(CLASSES, seed=1), train, val)
    assert [row["val_accuracy"] for row in auto.history_][:: len(auto.history_) - 1] == [0.1, 0.0]  # precondition
    assert auto.selection_.epoch == 1 and fit_meta(auto)["kept_first_epoch"] is True
    assert auto.selection_.rule.startswith("val_macro_f1 (epoch 1 val accuracy 0.100, last 0.000, 95% Wilson")
    # the kept weights are the selected epoch's: the same run stopped there gives them bit for bit
    stopped = LinearProbeHead(
        make_config(f"linear_probe.epochs={auto.best_epoch_}", "linear_probe.select=last").linear_probe
    )
    stopped.fit(Task(CLASSES, seed=1), train, val)
    assert torch.equal(stopped.weight_, auto.weight_)


def test_linear_probe_default_falls_back_on_a_small_val(make_config: Callable[..., Any]) -> None:
    train, val = anti_val()
    small_val = FeatureSet(val.features[:12], val.labels[:12])  # 4 per class
    head = LinearProbeHead(make_config().linear_probe).fit(Task(CLASSES, seed=1), train, small_val)
    epochs = make_config().linear_probe.epochs
    assert head.selection_ == Selection(epochs, "last_epoch (val too small: 4/class < 10)")
    assert fit_meta(head)["kept_first_epoch"] is False
    last = LinearProbeHead(make_config("linear_probe.select=last").linear_probe).fit(
        Task(CLASSES, seed=1), train, small_val
    )
    assert torch.equal(head.weight_, last.weight_) and last.selection_ == Selection(epochs, "last_epoch")
    assert not math.isnan(head.history_[-1]["val_loss"])


def test_best_epoch_copies_state_only_for_a_new_candidate_and_returns_it_when_chosen() -> None:
    rows = [
        {"val_macro_f1": f1, "val_loss": loss, "val_accuracy": f1}
        for f1, loss in ((0.5, 1.0), (0.8, 0.9), (0.8, 0.5), (0.6, 0.4))
    ]
    keeper, copies = BestEpoch("val_macro_f1"), []
    for epoch, row in enumerate(rows, 1):
        keeper.observe(epoch, row, lambda epoch=epoch: copies.append(epoch) or {"w": torch.tensor(float(epoch))})
    assert copies == [1, 2, 3]  # epoch 3 ties on F1 and wins on loss; epoch 4 is worse: never copied
    selection, state = keeper.choose(rows, torch.arange(4), 4)
    assert selection == Selection(3, "val_macro_f1") and state == {"w": torch.tensor(3.0)}
    loss_keeper = BestEpoch("val_loss")
    for epoch, row in enumerate(rows, 1):
        loss_keeper.observe(epoch, row, lambda: {})
    assert loss_keeper.choose(rows, torch.arange(4), 4) == (
        Selection(4, "val_loss"),
        None,
    )  # the last: nothing to restore


def test_best_epoch_without_validation_keeps_nothing_and_the_last_epoch() -> None:
    keeper = BestEpoch("auto")
    rows = [{"train_loss": 1.0}, {"train_loss": 0.5}]
    for epoch, row in enumerate(rows, 1):
        keeper.observe(epoch, row, lambda: pytest.fail("no val: no state to copy"))
    assert keeper.choose(rows, None, 3) == (Selection(2, "last_epoch (no validation split)"), None)
    last_keeper = BestEpoch("last")
    last_keeper.observe(1, {"val_macro_f1": 1.0, "val_loss": 0.0}, lambda: pytest.fail("'last' copies nothing"))


def test_val_accuracy_keeps_the_latest_of_the_best_epochs() -> None:
    """LP++'s official rule: every epoch whose val accuracy is >= the best so far replaces the kept one, even on
    a val set too small for ``auto`` and with a worse loss."""
    rows = history([0.5, 0.8, 0.6, 0.8, 0.7], loss=[1.0, 0.2, 1.0, 0.9, 1.0])
    assert select_epoch("val_accuracy", rows, labels(2), 3) == Selection(4, "val_accuracy")
    keeper = BestEpoch("val_accuracy")
    for epoch, row in enumerate(rows, start=1):
        keeper.observe(epoch, row, lambda: {"w": torch.tensor([float(epoch)])})
    selection, kept = keeper.choose(rows, labels(2), 3)
    assert selection.epoch == 4 and kept is not None and kept["w"].item() == 4.0
