"""Zero-shot on a labelled set with no training split: the whole set is the test set, no splits drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip import pipeline
from fewclip.fileio import read_csv
from fewclip.layout import RunLayout


def test_zero_shot_runs_on_a_test_only_folder(make_config: Callable[..., Any], shapes_dir: Path) -> None:
    # <root>/<class>/* with test_fraction 1: every image is a test image
    config = make_config("methods=[zero_shot]", dataset={"source": "folder", "path": str(shapes_dir / "test"),
                                                          "test_fraction": 1.0})
    pipeline.run(config)
    layout = RunLayout(Path(config.output.dir))
    assert read_csv(layout.train_full) == [] and not (layout.root / "splits").exists()
    images = sorted(p for p in (shapes_dir / "test").rglob("*.png"))
    rows = read_csv(layout.summary)
    assert [(r["method"], r["split"], int(r["n_eval"])) for r in rows] == [("zero_shot", "test", len(images))]


def test_few_shot_methods_on_a_test_only_set_say_what_to_do(make_config: Callable[..., Any], shapes_dir: Path) -> None:
    config = make_config(dataset={"source": "folder", "path": str(shapes_dir / "test"), "test_fraction": 1.0})
    with pytest.raises(ValueError, match=r"no train images \(a test-only set\).*methods: \[zero_shot\]"):
        pipeline.run(config)
