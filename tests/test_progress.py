"""Progress bars: one over training units (unit names as postfix) and one over epochs, shown only when
``output.progress`` is on; bars never change what is trained."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
import torch
from torch import nn

from fewclip.runner import pipeline
from fewclip.heads import FeatureSet
from fewclip.training.features_loop import FeatureTrainSettings, train_on_features

BAR = "%|"  # every tqdm bar line has the percentage followed by the bar's left edge


def prepared(make_config: Callable[..., Any], *overrides: str) -> pipeline.RunContext:
    ctx = pipeline.RunContext(make_config("few_shot.shots=[1,2]", "linear_probe.epochs=3", *overrides))
    pipeline.prepare(ctx)
    pipeline.features(ctx)
    return ctx


def test_quiet_training_prints_no_bar(make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    ctx = prepared(make_config, "output.progress=false")
    capsys.readouterr()
    assert pipeline.train(ctx) == [
        "zero_shot/shot_0-seed_0",
        "linear_probe/shot_1-seed_1",
        "linear_probe/shot_2-seed_1",
    ]
    assert BAR not in capsys.readouterr().err


def test_training_shows_units_and_epochs(make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    ctx = prepared(make_config, "output.progress=true")
    capsys.readouterr()
    pipeline.train(ctx)
    err = capsys.readouterr().err
    assert "train: 100%|" in err and "3/3" in err
    for unit in ("zero_shot/shot_0-seed_0", "linear_probe/shot_1-seed_1", "linear_probe/shot_2-seed_1"):
        assert unit in err
    assert re.search(r"epochs: +\d+%\|[^\r\n]*/3 \[", err)  # the linear probe's 3 epochs (cleared when done)


def tiny_problem() -> tuple[nn.Module, FeatureSet, FeatureSet, FeatureTrainSettings]:
    generator = torch.Generator().manual_seed(0)
    train = FeatureSet(torch.randn(12, 4, generator=generator), torch.arange(12) % 3)
    val = FeatureSet(torch.randn(6, 4, generator=generator), torch.arange(6) % 3)
    module = nn.Linear(4, 3)
    with torch.no_grad():
        module.weight.copy_(torch.randn(3, 4, generator=generator))
        module.bias.zero_()
    settings = FeatureTrainSettings(
        epochs=4, batch_size=5, lr=0.1, momentum=0.9, weight_decay=0.0, warmup_epochs=1, warmup_lr=0.01
    )
    return module, train, val, settings


def test_prompt_learning_epochs_bar_only_when_asked_and_same_result(capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for progress in (False, True):
        module, train, val, settings = tiny_problem()
        history, best_epoch, _ = train_on_features(module, module, train, val, 3, settings, seed=1, progress=progress)
        runs.append((history, best_epoch, module.weight.detach().clone()))
        err = capsys.readouterr().err
        assert (BAR in err) is progress
        if progress:
            assert "epochs:   0%|" in err and "0/4 [" in err and "epoch/s" in err
    (history_off, best_off, weight_off), (history_on, best_on, weight_on) = runs
    assert history_off == history_on and best_off == best_on and torch.equal(weight_off, weight_on)
