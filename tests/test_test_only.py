"""Zero-shot on a labelled set with no training split: the whole set is the test set, no splits drawn."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip.runner import pipeline
from fewclip.data.sources.folder import FolderSource, FolderSourceConfig
from fewclip.fileio import read_csv, read_json
from fewclip.runner.layout import RunLayout


def test_zero_shot_runs_on_a_test_only_folder(make_config: Callable[..., Any], shapes_dir: Path) -> None:
    # <root>/<class>/* with test_fraction 1: every image is a test image
    config = make_config(
        "methods=[zero_shot]", dataset={"source": "folder", "path": str(shapes_dir / "test"), "test_fraction": 1.0}
    )
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


def test_a_folder_holding_only_test_is_a_test_only_set(
    make_config: Callable[..., Any], shapes_dir: Path, tmp_path: Path
) -> None:
    # <root>/test/<class>/* and nothing else: test/ is the split, never a class of its own
    root = tmp_path / "only-test"
    shutil.copytree(shapes_dir / "test", root / "test")
    config = make_config("methods=[zero_shot]", dataset={"source": "folder", "path": str(root)})
    pipeline.run(config)
    layout = RunLayout(Path(config.output.dir))
    assert read_json(layout.classes)["raw"] == sorted(p.name for p in (root / "test").iterdir())
    assert read_csv(layout.train_full) == []
    images = sorted((root / "test").rglob("*.png"))
    assert sorted(r["path"] for r in read_csv(layout.test)) == [str(p.resolve()) for p in images]


def test_test_beside_class_folders_is_an_error_that_says_what_the_layout_means(
    tmp_path: Path, shapes_dir: Path
) -> None:
    root = tmp_path / "mixed"
    shutil.copytree(shapes_dir / "test", root / "test")
    shutil.copytree(shapes_dir / "test" / "red_circle", root / "red_circle")
    with pytest.raises(ValueError) as info:
        FolderSource(FolderSourceConfig(path=str(root)))
    message = str(info.value)
    assert f"dataset.path: {root} has a test/ folder but no train/" in message and "['red_circle']" in message
    assert "dataset.test_dir" in message
