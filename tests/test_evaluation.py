"""The evaluate stage skips what is done: per-unit records keyed on their inputs, reused on re-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip.runner import evaluation, pipeline
from fewclip.runner.layout import RunLayout

TABLES = ("summary.csv", "per_class.csv", "zero_shot_templates.csv")


def tables(layout: RunLayout) -> dict[str, str]:
    return {name: (layout.results / name).read_text() for name in TABLES}


@pytest.fixture()
def evaluated(
    make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, RunLayout, list[Any], list[Any]]:
    """A finished run (zero-shot + linear probe, 1 and 2 shots) and counters of units / saliency computed after it."""
    config = make_config("few_shot.shots=[1,2]", "output.saliency_images=2")
    pipeline.run(config)
    evaluated_units: list[Any] = []
    saliency_calls: list[Any] = []
    real_unit, real_saliency = evaluation.evaluate_unit, evaluation.write_saliency
    monkeypatch.setattr(
        evaluation, "evaluate_unit", lambda ctx, unit, *a: evaluated_units.append(unit) or real_unit(ctx, unit, *a)
    )
    monkeypatch.setattr(
        evaluation,
        "write_saliency",
        lambda ctx, head, method, *a: saliency_calls.append(method) or real_saliency(ctx, head, method, *a),
    )
    return config, RunLayout(Path(config.output.dir)), evaluated_units, saliency_calls


def test_rerun_recomputes_nothing_and_assembles_the_same_tables(
    evaluated: tuple[Any, RunLayout, list[Any], list[Any]],
) -> None:
    config, layout, units, saliency = evaluated
    before = tables(layout)
    assert before["summary.csv"].count("\n") == 1 + 3  # header, zero_shot, linear_probe x 2 shot budgets
    (layout.results / "summary.csv").unlink()  # rebuilt from the stored per-unit records
    pipeline.evaluate(pipeline.RunContext(config))
    assert units == [] and saliency == []
    assert tables(layout) == before


def test_retrained_units_alone_are_evaluated_again(
    evaluated: tuple[Any, RunLayout, list[Any], list[Any]], make_config: Callable[..., Any]
) -> None:
    _, layout, units, saliency = evaluated
    ctx = pipeline.RunContext(make_config("few_shot.shots=[1,2]", "output.saliency_images=2", "linear_probe.epochs=3"))
    assert pipeline.train(ctx) == ["linear_probe/shot_1-seed_1", "linear_probe/shot_2-seed_1"]
    pipeline.evaluate(ctx)
    assert units == [("linear_probe", 1, 1), ("linear_probe", 2, 1)]
    assert saliency == ["linear_probe"]  # zero-shot's overlays are unchanged
    rows = layout.summary.read_text().splitlines()
    assert len(rows) == 4 and rows[1].startswith("zero_shot,0,0,test,")


def test_a_deleted_prediction_or_changed_setting_is_redone(
    evaluated: tuple[Any, RunLayout, list[Any], list[Any]], make_config: Callable[..., Any]
) -> None:
    config, layout, units, _ = evaluated
    (layout.predictions / "linear_probe" / "shot_2-seed_1-test.csv").unlink()
    pipeline.evaluate(pipeline.RunContext(config))
    assert units == [("linear_probe", 2, 1)]
    assert (layout.predictions / "linear_probe" / "shot_2-seed_1-test.csv").is_file()
    units.clear()
    pipeline.evaluate(
        pipeline.RunContext(make_config("few_shot.shots=[1,2]", "output.saliency_images=2", "output.figures=false"))
    )
    assert units == [("zero_shot", 0, 0), ("linear_probe", 1, 1), ("linear_probe", 2, 1)]


def test_a_stale_record_key_is_not_trusted(evaluated: tuple[Any, RunLayout, list[Any], list[Any]]) -> None:
    config, layout, units, _ = evaluated
    store = layout.unit_evaluation("zero_shot", 0, 0)
    store.write_text(store.read_text().replace('"key": "', '"key": "0'))
    pipeline.evaluate(pipeline.RunContext(config))
    assert units == [("zero_shot", 0, 0)]


def test_evaluation_shows_a_bar_over_units(make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config("few_shot.shots=[1]", "output.saliency_images=0")
    pipeline.run(config)
    capsys.readouterr()
    pipeline.evaluate(
        pipeline.RunContext(make_config("few_shot.shots=[1]", "output.saliency_images=0", "output.progress=true"))
    )
    err = capsys.readouterr().err
    assert "evaluate" in err and "2/2" in err
    pipeline.evaluate(pipeline.RunContext(config))
    assert "evaluate" not in capsys.readouterr().err
