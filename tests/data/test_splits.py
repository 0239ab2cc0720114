"""fewclip.data.splits through the real prepare stage: deterministic, seeded, nested in K, fixed validation."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from fewclip.data.records import Record, read_records
from fewclip.data.splits import load_split
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, prepare

SHOTS = [1, 2, 4]
SEEDS = [1, 2]
VAL = 2


def _prepared(make_config, run_dir: Path, data: Path | None = None) -> RunLayout:
    blocks = {"dataset": {"source": "folder", "path": str(data)}} if data is not None else {}
    config = make_config(
        f"splits.seeds={SEEDS}",
        f"splits.val_per_class={VAL}",
        f"few_shot.shots={SHOTS}",
        f"output.dir={run_dir}",
        **blocks,
    )
    assert config.splits.seeds == SEEDS and config.few_shot.shots == SHOTS
    prepare(RunContext(config))
    return RunLayout(run_dir)


@pytest.fixture()
def run(make_config, tmp_path: Path) -> RunLayout:
    return _prepared(make_config, tmp_path / "run_a")


def _per_class(records: list[Record]) -> dict[int, set[str]]:
    by_class: dict[int, set[str]] = {}
    for record in records:
        by_class.setdefault(record.label, set()).add(record.sha1)
    return by_class


def test_same_data_same_split_files(make_config, run: RunLayout, tmp_path: Path) -> None:
    other = _prepared(make_config, tmp_path / "run_b")
    for seed in SEEDS:
        for k in SHOTS:
            for name in ("train.csv", "val.csv"):
                mine, theirs = run.split_dir(seed, k) / name, other.split_dir(seed, k) / name
                assert mine.read_bytes() == theirs.read_bytes(), (seed, k, name)


def test_selection_ignores_file_names_and_location(
    make_config, run: RunLayout, shapes_dir: Path, tmp_path: Path
) -> None:
    """The same images under other names and another root give the same selection (by content)."""
    renamed = tmp_path / "renamed"
    for image in shapes_dir.glob("*/*/*.png"):
        split, name = image.parts[-3], image.parts[-2]
        target = renamed / split / name / f"img_{99 - int(image.stem):03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    other = _prepared(make_config, tmp_path / "run_renamed", data=renamed)
    for seed in SEEDS:
        for k in SHOTS:
            for mine, theirs in zip(load_split(run, seed, k), load_split(other, seed, k)):
                assert [r.sha1 for r in mine] == [r.sha1 for r in theirs]


def test_different_seeds_select_differently(run: RunLayout) -> None:
    first_train, first_val = load_split(run, SEEDS[0], max(SHOTS))
    second_train, second_val = load_split(run, SEEDS[1], max(SHOTS))
    assert {r.sha1 for r in first_train} != {r.sha1 for r in second_train}
    assert {r.sha1 for r in first_val} != {r.sha1 for r in second_val}


@pytest.mark.parametrize("seed", SEEDS)
def test_smaller_k_nested_in_larger_k(run: RunLayout, seed: int) -> None:
    trains = {k: _per_class(load_split(run, seed, k)[0]) for k in SHOTS}
    for k in SHOTS:
        assert {label: len(sha1s) for label, sha1s in trains[k].items()} == {0: k, 1: k, 2: k}
        assert Counter(r.label for r in load_split(run, seed, k)[0]) == {0: k, 1: k, 2: k}  # no duplicates
    for small, large in zip(SHOTS, SHOTS[1:]):
        for label in trains[small]:
            assert trains[small][label] < trains[large][label], (small, large, label)


@pytest.mark.parametrize("seed", SEEDS)
def test_val_fixed_across_k_and_disjoint_from_train(run: RunLayout, seed: int) -> None:
    vals = {k: (run.split_dir(seed, k) / "val.csv").read_bytes() for k in SHOTS}
    assert len(set(vals.values())) == 1
    val = load_split(run, seed, SHOTS[0])[1]
    assert Counter(r.label for r in val) == {0: VAL, 1: VAL, 2: VAL}
    for k in SHOTS:
        train = load_split(run, seed, k)[0]
        assert not {r.sha1 for r in train} & {r.sha1 for r in val}


def test_splits_draw_only_from_train_full(run: RunLayout) -> None:
    train_full = set(read_records(run.train_full))
    test_sha1s = {r.sha1 for r in read_records(run.test)}
    for seed in SEEDS:
        for k in SHOTS:
            train, val = load_split(run, seed, k)
            assert set(train) <= train_full
            assert set(val) <= train_full
            assert not {r.sha1 for r in train + val} & test_sha1s


def test_missing_split_is_reported(run: RunLayout) -> None:
    with pytest.raises(FileNotFoundError, match="fewclip prepare"):
        load_split(run, 99, 1)


def test_capping_is_announced_once_per_class(make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config("few_shot.shots=[16]", "few_shot.allow_fewer=true", f"output.dir={tmp_path / 'run'}")
    with caplog.at_level("WARNING"):
        prepare(RunContext(config))
    capping = [r.getMessage() for r in caplog.records if "capping" in r.getMessage()]
    assert sorted(capping) == sorted(
        f"class {name!r} has 12 train images: fewer than 16 shots + 2 val; capping"
        for name in ("blue_triangle", "green_square", "red_circle")
    )
