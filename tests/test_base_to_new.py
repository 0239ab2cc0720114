"""The base-to-new protocol through the pipeline, and prompt checks before any training."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip.data.records import Record
from fewclip.data.subsample import base_new, eval_views, train_view
from fewclip.fileio import read_csv
from fewclip.runner.layout import RunLayout
from fewclip.metrics import harmonic_mean
from fewclip.runner.pipeline import RunContext, features, prepare, run, train


def test_base_is_the_first_half_rounded_up_and_both_are_relabelled_from_zero() -> None:
    base, new = base_new(5)
    assert base.labels == (0, 1, 2) and new.labels == (3, 4)
    records = [Record(f"{i}.png", i, f"c{i}", f"{i:040x}") for i in range(5)]
    assert [r.label for r in new.select(records)] == [0, 1]
    assert [r.class_name for r in new.select(records)] == ["c3", "c4"]
    assert train_view(5, "base2new") == base and eval_views(5, "base2new") == [base, new]
    assert eval_views(5, "all")[0].labels == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="at least two classes"):
        base_new(1)


def test_base2new_run_writes_base_new_and_harmonic_mean_rows(make_config: Callable[..., Any]) -> None:
    config = make_config(
        "methods=[zero_shot,linear_probe,coop,cocoop]",
        "splits.subsample=base2new",
        "few_shot.shots=[2]",
        "coop.epochs=3",
        "cocoop.epochs=2",
    )
    run(config)
    layout = RunLayout(Path(config.output.dir))
    rows = read_csv(layout.summary)
    splits = {(r["method"], r["split"]) for r in rows}
    for method in ("zero_shot", "coop", "cocoop"):
        assert {(method, "base"), (method, "new"), (method, "hm")} <= splits
    assert ("linear_probe", "base") in splits and ("linear_probe", "new") not in splits  # it cannot name new classes
    for r in rows:
        if r["split"] == "hm":
            base = next(
                x for x in rows if x["method"] == r["method"] and x["seed"] == r["seed"] and x["split"] == "base"
            )
            new = next(x for x in rows if x["method"] == r["method"] and x["seed"] == r["seed"] and x["split"] == "new")
            assert float(r["accuracy"]) == pytest.approx(
                harmonic_mean(float(base["accuracy"]), float(new["accuracy"])), abs=1e-6
            )
    # labels follow the sorted raw names (blue_triangle, green_square, red_circle): base = first two, new = the third
    with open(layout.predictions / "coop" / "shot_2-seed_1-new.csv", newline="") as handle:
        new_predictions = list(csv.DictReader(handle))
    assert {p["class_name"] for p in new_predictions} == {"red circle"}
    assert all(p["label"] == "0" and p["pred"] == "0" for p in new_predictions)  # one new class, relabelled 0
    with open(layout.predictions / "coop" / "shot_2-seed_1-base.csv", newline="") as handle:
        assert {p["class_name"] for p in csv.DictReader(handle)} == {"blue triangle", "green square"}


def test_base2new_with_one_class_fails_at_prepare(make_config: Callable[..., Any]) -> None:
    config = make_config("splits.subsample=base2new", "dataset.classes=[red_circle]")
    with pytest.raises(ValueError, match="at least two classes"):
        prepare(RunContext(config))


def test_a_prompt_too_long_fails_before_any_head_is_trained(make_config: Callable[..., Any]) -> None:
    config = make_config("methods=[linear_probe,coop]", "coop.n_ctx=30")
    ctx = RunContext(config)
    prepare(ctx)
    features(ctx)
    with pytest.raises(
        ValueError,
        match=r"coop: the prompt for class '.+' needs \d+ tokens .* 32 text positions.*lower coop\.n_ctx to at most",
    ):
        train(ctx)
    assert not (ctx.layout.heads / "linear_probe").exists()
