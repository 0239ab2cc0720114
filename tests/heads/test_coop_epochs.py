"""``coop.epochs`` as an int or per shot budget: ``CoOpConfig.epochs_for`` and the epochs a run trains."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip.heads import CoOpConfig
from fewclip.runner.pipeline import run


def test_an_int_is_the_same_for_every_shot_budget() -> None:
    config = CoOpConfig(epochs=7)
    assert [config.epochs_for(k) for k in (1, 2, 16, 128)] == [7, 7, 7, 7]
    assert config.settings(16).epochs == 7


def test_a_mapping_gives_each_listed_budget_its_epochs() -> None:
    config = CoOpConfig(epochs={1: 50, 4: 100, 16: 200})
    assert [config.epochs_for(k) for k in (1, 4, 16)] == [50, 100, 200]
    assert config.settings(4).epochs == 100


def test_a_missing_budget_takes_the_largest_listed_below_it_else_the_smallest() -> None:
    config = CoOpConfig(epochs={4: 100, 16: 200})
    assert config.epochs_for(8) == 100  # between 4 and 16: the budget below
    assert config.epochs_for(64) == 200  # above every listed budget: the largest
    assert config.epochs_for(1) == 100  # below every listed budget: the smallest listed


@pytest.mark.parametrize("epochs", [0, {}, {0: 10}, {4: 0}])
def test_non_positive_epochs_or_an_empty_mapping_fail(epochs: Any) -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1, or a non-empty mapping"):
        CoOpConfig(epochs=epochs)


def test_a_mapping_from_a_dotted_override_sets_the_epochs_each_unit_trains(make_config: Callable[..., Any]) -> None:
    config = make_config("methods=[coop]", "coop.n_ctx=2", "coop.epochs={1: 2, 2: 3}", "few_shot.shots=[1,2,4]")
    assert config.coop.epochs == {1: 2, 2: 3}
    run(config)
    history = Path(config.output.dir) / "results" / "history" / "coop"
    lengths = {}
    for shots in (1, 2, 4):
        with open(history / f"shot_{shots}-seed_1.csv", newline="") as handle:
            lengths[shots] = len(list(csv.DictReader(handle)))
    assert lengths == {1: 2, 2: 3, 4: 3}  # 4 is not listed: it trains as many as 2, the budget below
