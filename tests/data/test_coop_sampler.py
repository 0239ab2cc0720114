"""splits.sampler: coop -- CoOp's few-shot sets, checked against Dassl's draw written out again here."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from fewclip.runner import pipeline
from fewclip.runner.config import ConfigError
from fewclip.data.records import read_records
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, prepare
from tests.data.coop_layout import build_coop_dataset


def dassl_fewshot(data: list, num_shots: int) -> list:
    """Dassl's DatasetBase.generate_fewshot_dataset(data, num_shots=K), repeat=False, on [path, label, name] rows."""
    tracker = defaultdict(list)
    for item in data:
        tracker[item[1]].append(item)
    dataset = []
    for _, items in tracker.items():
        dataset.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
    return dataset


def coop_reference(split_file: Path, image_root: Path, seed: int, shots: int) -> tuple[list[Path], list[Path]]:
    """What a CoOp run with --seed S and NUM_SHOTS K trains and validates on: set_random_seed(S), then the
    dataset class draws train with K, then val with min(K, 4)."""
    split = json.loads(split_file.read_text())
    random.seed(seed)
    train = dassl_fewshot(split["train"], shots)
    val = dassl_fewshot(split["val"], min(shots, 4))
    return [(image_root / row[0]).resolve() for row in train], [(image_root / row[0]).resolve() for row in val]


def split_paths(layout: RunLayout, seed: int, shots: int) -> tuple[list[Path], list[Path]]:
    folder = layout.split_dir(seed, shots)
    return tuple([Path(r.path) for r in read_records(folder / f"{name}.csv")] for name in ("train", "val"))


@pytest.fixture()
def coop_config(tmp_path: Path, make_config):
    def build(name: str = "DTD", *overrides: str, counts=None, label_order=None, write_tree: bool = True):
        if write_tree:
            build_coop_dataset(tmp_path / "DATA", name, counts, label_order)
        return make_config(
            "splits.sampler=coop",
            "splits.val_per_class=4",
            *overrides,
            dataset={"source": "coop", "path": str(tmp_path / "DATA"), "name": name},
        )

    return build


def test_sets_equal_dassls_draw_including_short_classes_and_list_order(tmp_path: Path, coop_config) -> None:
    # Class 1 has 3 train images (< K=4: all taken, no random number drawn) and 1 val image; the lists
    # name class 2 first, so Dassl draws for it first.
    config = coop_config(
        "DTD",
        "few_shot.shots=[1,2,4,8]",
        "splits.seeds=[1,2,7]",
        counts={"train": [5, 3, 9], "val": [2, 1, 6], "test": [1, 1, 1]},
        label_order=[2, 0, 1],
    )
    prepare(RunContext(config))
    layout = RunLayout(Path(config.output.dir))
    folder = tmp_path / "DATA" / "dtd"
    for seed in (1, 2, 7):
        for shots in (1, 2, 4, 8):
            expected = coop_reference(folder / "split_zhou_DescribableTextures.json", folder / "images", seed, shots)
            assert split_paths(layout, seed, shots) == expected, (seed, shots)
    train, val = split_paths(layout, 1, 4)
    assert len(train) == 4 + 3 + 4 and len(val) == 2 + 1 + 4  # short classes whole, val min(K, 4) per class


def test_sets_differ_across_seeds_and_are_not_nested_across_shots(coop_config) -> None:
    config = coop_config(
        "OxfordPets",
        "few_shot.shots=[1,2,4]",
        "splits.seeds=[1,2]",
        counts={"train": [12, 12, 12], "val": [4, 4, 4], "test": [1, 1, 1]},
    )
    prepare(RunContext(config))
    layout = RunLayout(Path(config.output.dir))
    sets = {(seed, k): set(split_paths(layout, seed, k)[0]) for seed in (1, 2) for k in (1, 2, 4)}
    assert sets[1, 4] != sets[2, 4] and sets[1, 2] != sets[2, 2]
    nested = [sets[s, 1] <= sets[s, 2] <= sets[s, 4] for s in (1, 2)]
    assert nested == [False, False]  # unlike fewclip's sampler, a larger K is a fresh draw
    # fewclip's own sampler on the same prepared data is nested
    fewclip = coop_config(
        "OxfordPets",
        "few_shot.shots=[1,2,4]",
        "splits.seeds=[1,2]",
        "splits.sampler=fewclip",
        "output.dir=" + str(layout.root) + "-fewclip",
        write_tree=False,
    )
    prepare(RunContext(fewclip))
    own = RunLayout(Path(fewclip.output.dir))
    assert all(
        set(split_paths(own, s, 1)[0]) <= set(split_paths(own, s, 2)[0]) <= set(split_paths(own, s, 4)[0])
        for s in (1, 2)
    )


def test_imagenet_draws_train_only(coop_config, tmp_path: Path) -> None:
    config = coop_config(
        "ImageNet",
        "few_shot.shots=[2]",
        "splits.seeds=[3]",
        counts={"train": [4, 1, 5], "val": [0, 0, 0], "test": [1, 1, 1]},
    )
    prepare(RunContext(config))
    # the same tree again, to list ImageNet's train images as CoOp's reader does (sorted wnid folders)
    again = build_coop_dataset(
        tmp_path / "again", "ImageNet", {"train": [4, 1, 5], "val": [0, 0, 0], "test": [1, 1, 1]}
    )
    rows = [[str(p), y] for p, y in again["train"]]
    random.seed(3)
    expected = [Path(p).name for p, _ in dassl_fewshot(rows, 2)]
    train, val = split_paths(RunLayout(Path(config.output.dir)), 3, 2)
    assert [p.name for p in train] == expected and val == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"source": "folder"},
            "splits: sampler coop draws CoOp's sets from a CoOp split file, so it needs "
            "dataset.source: coop (got 'folder')",
        ),
        ({"classes": ["beta", "gamma"]}, "dataset.classes and dataset.max_train_per_class change that list"),
        ({"max_train_per_class": 3}, "dataset.classes and dataset.max_train_per_class change that list"),
    ],
)
def test_sampler_coop_refuses_configs_that_change_the_lists(make_config, shapes_dir: Path, overrides, message) -> None:
    dataset = {"source": "coop", "path": "/nowhere", "name": "DTD", **overrides}
    if overrides.get("source") == "folder":
        dataset = {"source": "folder", "path": str(shapes_dir)}
    with pytest.raises(ConfigError, match="splits: sampler coop") as err:
        make_config("splits.sampler=coop", dataset=dataset)
    assert message in str(err.value)


def test_unreadable_train_image_is_refused_under_sampler_coop(coop_config, tmp_path: Path) -> None:
    config = coop_config("DTD", "few_shot.shots=[1]", "splits.seeds=[1]")
    broken = sorted((tmp_path / "DATA" / "dtd" / "images" / "class0").glob("train_*"))[0]
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="prepare skipped 1 unreadable train/val image"):
        prepare(RunContext(config))


def test_run_end_to_end_on_a_coop_dataset_with_coop_sets(coop_config, tmp_path: Path) -> None:
    config = coop_config("Caltech101", "few_shot.shots=[1,2]", "splits.seeds=[1,2]", "training.epochs=5")
    pipeline.run(config)
    layout = RunLayout(Path(config.output.dir))
    with open(layout.summary, newline="") as handle:
        rows = list(csv.DictReader(handle))
    units = {(r["method"], r["shots"], r["seed"]) for r in rows}
    assert units >= {("zero_shot", "0", "0"), ("linear_probe", "1", "1"), ("linear_probe", "2", "2")}
    folder = tmp_path / "DATA" / "caltech-101"
    for seed in (1, 2):
        for shots in (1, 2):
            expected = coop_reference(
                folder / "split_zhou_Caltech101.json", folder / "101_ObjectCategories", seed, shots
            )
            assert split_paths(layout, seed, shots) == expected
    assert json.loads((layout.classes).read_text())["readable"] == ["face", "airplane", "anchor"]


def test_run_end_to_end_on_imagenet_without_a_val_split(coop_config) -> None:
    config = coop_config("ImageNet", "few_shot.shots=[2]", "splits.seeds=[1]", "training.epochs=3")
    pipeline.run(config)
    layout = RunLayout(Path(config.output.dir))
    with open(layout.summary, newline="") as handle:
        units = {(r["method"], r["shots"]) for r in csv.DictReader(handle)}
    assert ("linear_probe", "2") in units
    assert split_paths(layout, 1, 2)[1] == [] and len(split_paths(layout, 1, 2)[0]) == 6
