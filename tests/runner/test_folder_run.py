"""``fewclip run FOLDER``: a folder of the user's JPEGs, in each of its three layouts, runs with the config built
for it (the budgets its smallest class allows, said in the log); offline, a hub model that is not cached fails
before anything is written, saying how to use a local folder or the shipped world CLIP."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import yaml

from fewclip.runner.cli import main
from fewclip.runner.folder_config import BUDGETS, allowed_budgets, feature_heads, folder_config
from fewclip.heads import HEADS, list_heads
from tests.runner.image_folders import jpeg_folder

FAST = ["model.id=fewclip/world-clip", "methods=[zero_shot,linear_probe]", "splits.seeds=[1]", "linear_probe.epochs=2"]
FAST += ["output.figures=false"]


@pytest.mark.parametrize(
    ("layout", "train", "shots", "val", "smallest"),
    [
        ("classes", {"red_circle": 8, "green_square": 8}, None, None, None),  # the hold-out hash decides the count
        ("train_test", {"red_circle": 6, "green_square": 6, "yellow_circle": 2}, [1], 1, ("yellow_circle", 2)),
        ("train_val", {"red_circle": 6, "blue_triangle": 7}, [1, 2], 3, ("red_circle", 6)),
    ],
)
def test_a_folder_of_jpegs_runs_with_the_budgets_its_smallest_class_allows(
    layout: str,
    train: dict[str, int],
    shots: list[int] | None,
    val: int | None,
    smallest: tuple[str, int] | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = jpeg_folder(tmp_path / "my photos", layout, train)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        assert main(["run", "my photos", *FAST, f"cache.dir={tmp_path / 'cache'}"]) == 0
    run = tmp_path / "runs" / "my photos"  # runs/<folder name> in the working directory
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["dataset"] == {**config["dataset"], "source": "folder", "path": str(folder.resolve())}
    assert config["name"] == "my photos" and config["methods"] == ["zero_shot", "linear_probe"]
    budget_lines = [r.getMessage() for r in caplog.records if "validation image(s) per class" in r.getMessage()]
    assert len(budget_lines) == 1
    if smallest is not None:
        assert config["few_shot"]["shots"] == shots and config["splits"]["val_per_class"] == val
        assert (
            f"the smallest, {smallest[0]!r}, has {smallest[1]} train images: shots {shots} with {val} validation "
            "image(s) per class"
        ) in budget_lines[0]
    else:
        assert config["few_shot"]["shots"] and set(config["few_shot"]["shots"]) <= set(BUDGETS)
    with (run / "results" / "summary.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    trained_shots = sorted({int(r["shots"]) for r in rows if r["method"] == "linear_probe"})
    assert trained_shots == config["few_shot"]["shots"] and {r["split"] for r in rows} == {"test"}
    tested = len((run / "data" / "test.csv").read_text(encoding="utf-8").splitlines()) - 1
    if layout != "classes":  # test/ or val/ is the test split, whole
        assert tested == 3 * len(train)


def test_command_line_budgets_stand_and_every_feature_head_is_the_default(tmp_path: Path) -> None:
    folder = jpeg_folder(tmp_path / "photos", "train_test", {"red_circle": 20, "green_square": 20})
    built = folder_config(folder, ["few_shot.shots=[2]", "splits.val_per_class=1"], tmp_path / "cache")
    assert "few_shot" not in built and built["splits"] == {"seeds": [1, 2, 3], "val_per_class": 1}
    built = folder_config(folder, [], tmp_path / "cache")
    assert built["few_shot"] == {"shots": [1, 2, 4, 8, 16]} and built["splits"]["val_per_class"] == 4
    assert (
        built["methods"]
        == feature_heads()
        == [name for name in list_heads() if HEADS.get(name).__module__.startswith("fewclip.heads.on_features.")]
    )
    assert "zero_shot" in built["methods"] and "coop" not in built["methods"] and "model" not in built


@pytest.mark.parametrize(
    ("smallest", "shots", "val"),
    [
        (0, [], 0),
        (1, [1], 0),
        (2, [1], 1),
        (3, [1, 2], 1),
        (7, [1, 2, 4], 3),
        (12, [1, 2, 4, 8], 4),
        (20, list(BUDGETS), 4),
    ],
)
def test_budgets_leave_room_for_validation_images(smallest: int, shots: list[int], val: int) -> None:
    budgets = allowed_budgets(smallest, 4)
    assert (budgets.shots, budgets.val_per_class) == (shots, val)
    assert all(k + budgets.val_per_class <= smallest for k in budgets.shots)


def test_a_class_without_room_for_one_shot_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = jpeg_folder(tmp_path / "photos", "train_test", {"red_circle": 6, "green_square": 1})
    assert main(["-q", "run", str(folder), "splits.val_per_class=2", f"cache.dir={tmp_path / 'cache'}"]) == 2
    err = capsys.readouterr().err
    assert "class 'green_square' has 1 train image(s), fewer than 1 shot + 2 validation image(s)" in err


def test_offline_an_uncached_hub_model_fails_at_once_saying_what_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = jpeg_folder(tmp_path / "photos", "train_test", {"red_circle": 4, "green_square": 4})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        main(["-q", "run", str(folder), "model.id=fewclip-tests/not-cached-clip", f"cache.dir={tmp_path / 'c'}"]) == 2
    )
    err = capsys.readouterr().err
    assert "model.id: 'fewclip-tests/not-cached-clip' is not in the local Hugging Face cache" in err
    assert "point model.id at a local model folder" in err and "(model.id=fewclip/world-clip)" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "c").exists()  # nothing written
