"""The run records how each unit chose its epoch and its temperature: head JSON, summary.csv columns
(selection, ece, ece_uncalibrated) and a warning listing the units that kept their first epoch."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from safetensors.torch import load_file

from fewclip.runner import pipeline
from fewclip.heads import FeatureSet, LinearProbeHead, Task
from fewclip.runner.layout import RunLayout


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Independent of fewclip.runner.analysis: 15 equal-width bins (lower edge open, the first closed)."""
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        members = ((confidence > low) | (b == 0)) & (confidence <= high)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def test_summary_records_selection_and_ece_before_and_after_calibration(make_config: Callable[..., Any]) -> None:
    config = make_config("few_shot.shots=[1,2]")
    pipeline.run(config)
    layout = RunLayout(Path(config.output.dir))
    rows = read_rows(layout.summary)
    assert list(rows[0])[9:11] == ["ece", "ece_uncalibrated"] and list(rows[0])[-2:] == ["best_epoch", "selection"]
    assert len(rows) == 3
    for row in rows:
        unit = f"{row['method']}/shot_{row['shots']}-seed_{row['seed']}"
        meta = json.loads((layout.heads / f"{unit}.json").read_text())
        tensors = load_file(str(layout.heads / f"{unit}.safetensors"))
        logits = np.load(layout.predictions / f"{unit}-test.logits.npy").astype(np.float64)
        labels = np.array([int(p["label"]) for p in read_rows(layout.predictions / f"{unit}-test.csv")])
        assert float(row["ece"]) == pytest.approx(ece(logits, labels), abs=2e-6)
        if row["method"] == "zero_shot":
            assert row["selection"] == "" and meta["temperature"] == 1.0
            assert row["ece_uncalibrated"] == row["ece"]
            continue
        temperature = float(tensors["temperature"])
        assert meta["temperature"] == pytest.approx(temperature) and temperature != 1.0
        assert meta["calibration"].startswith(f"T={temperature:.4g}")
        # the predictions are the calibrated logits; before calibration they were T times larger
        assert float(row["ece_uncalibrated"]) == pytest.approx(ece(logits * temperature, labels), abs=2e-6)
        assert row["ece_uncalibrated"] != row["ece"]
        epochs = config.linear_probe.epochs
        assert row["selection"] == meta["selection_rule"] == "last_epoch (val too small: 2/class < 10)"
        assert row["best_epoch"] == str(epochs) and meta["kept_first_epoch"] is False


def test_units_that_kept_their_first_epoch_are_named_at_the_end_of_train(
    make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Val labels shifted by one class: every epoch of learning raises the val loss, so epoch 1 is kept."""
    original_fit = LinearProbeHead.fit

    def misleading_val(
        self: LinearProbeHead, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None
    ) -> LinearProbeHead:
        assert val is not None
        return original_fit(self, task, train, FeatureSet(val.features, (val.labels + 1) % 3))

    monkeypatch.setattr(LinearProbeHead, "fit", misleading_val)
    config = make_config("few_shot.shots=[1,2]", "linear_probe.select=val_loss")
    layout = RunLayout(Path(config.output.dir))
    expected = (
        "2 unit(s) kept their first epoch's state (training did not beat its start on validation; check the "
        "learning rate and schedule, or set select: last): linear_probe/shot_1-seed_1 (val_loss); "
        "linear_probe/shot_2-seed_1 (val_loss)"
    )
    for attempt in ("trains", "skips the trained units and still says it"):
        ctx = pipeline.RunContext(config)
        if attempt == "trains":
            pipeline.prepare(ctx)
            pipeline.features(ctx)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fewclip.runner.pipeline"):
            trained = pipeline.train(ctx)
        assert len(trained) == (3 if attempt == "trains" else 0)
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [expected], attempt
    for shots in (1, 2):
        meta = json.loads((layout.heads / "linear_probe" / f"shot_{shots}-seed_1.json").read_text())
        assert meta["kept_first_epoch"] is True and meta["best_epoch"] == 1 and meta["selection_rule"] == "val_loss"
        losses = [row["val_loss"] for row in meta["history"]]
        assert min(losses) == losses[0] < losses[-1]
