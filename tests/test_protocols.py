"""Domain generalisation and cross-dataset transfer (``dataset.eval_on``), end to end on fake CoOp-layout trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewclip.data.records import read_records
from fewclip.features import load_features
from fewclip.fileio import read_csv, read_json
from fewclip.heads import load_head
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, run

from tests.data.coop_layout import IMAGENET_CLASSES, build_coop_dataset, build_imagenet_variant, readable_classes

VARIANTS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
IMAGENET_NAMES = list(IMAGENET_CLASSES.values())  # labels follow the sorted wnids, which this dict already is


@pytest.fixture(scope="module")
def dg_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> tuple[RunLayout, dict]:
    """ImageNet trained, evaluated on its 4 variants and on EuroSAT (cross-dataset) in one run."""
    root = tmp_path_factory.mktemp("protocols")
    data = root / "DATA"
    images = {name: build_imagenet_variant(data, name) for name in VARIANTS}
    build_coop_dataset(data, "EuroSAT")
    from fewclip.runner.config import load_config

    build_coop_dataset(data, "ImageNet", counts={"train": [4, 4, 4], "test": [2, 2, 2]})
    targets = [{"source": "coop", "path": str(data), "name": n} for n in VARIANTS]
    targets.append({"source": "coop", "path": str(data), "name": "EuroSAT"})
    config = load_config(
        None,
        [],
        base={
            "methods": ["zero_shot", "linear_probe", "coop"],
            "model": {"id": str(tiny_clip), "batch_size": 16},
            "dataset": {"source": "coop", "path": str(data), "name": "ImageNet", "eval_on": targets},
            "few_shot": {"shots": [1]},
            "splits": {"seeds": [1, 2], "val_per_class": 1},
            "linear_probe": {"epochs": 5},
            "coop": {"epochs": 2, "n_ctx": 4},
            "output": {"dir": str(root / "run"), "progress": False, "figures": False},
            "cache": {"dir": str(root / "cache")},
        },
    )
    run(config)
    return RunLayout(root / "run"), {"config": config, "images": images}


def test_every_unit_has_a_row_per_target_named_by_the_split_column(dg_run) -> None:
    layout, _ = dg_run
    rows = read_csv(layout.summary)
    splits = {
        (r["method"], r["seed"]): {x["split"] for x in rows if (x["method"], x["seed"]) == (r["method"], r["seed"])}
        for r in rows
    }
    dg = {"test", *VARIANTS}
    assert splits[("zero_shot", "0")] == dg | {"EuroSAT"}
    assert splits[("coop", "1")] == splits[("coop", "2")] == dg | {"EuroSAT"}
    assert splits[("linear_probe", "1")] == dg  # no EuroSAT: it cannot name EuroSAT's classes
    n_eval = {r["split"]: int(r["n_eval"]) for r in rows if r["method"] == "zero_shot"}
    assert n_eval == {"test": 6, "ImageNetV2": 6, "ImageNetSketch": 6, "ImageNetA": 4, "ImageNetR": 4, "EuroSAT": 6}


def test_targets_json_names_protocols_and_heads_that_cannot_transfer(dg_run) -> None:
    layout, _ = dg_run
    entries = {e["target"]: e for e in read_json(layout.targets)["targets"]}
    assert list(entries) == [*VARIANTS, "EuroSAT"]
    assert {t: e["protocol"] for t, e in entries.items()} == {
        **{v: "domain_generalisation" for v in VARIANTS},
        "EuroSAT": "cross_dataset",
    }
    assert entries["ImageNetA"]["n_classes"] == 2 and entries["ImageNetV2"]["n_classes"] == 3
    assert entries["EuroSAT"]["cannot_transfer"] == ["linear_probe"]
    assert all(e["cannot_transfer"] == [] for t, e in entries.items() if t != "EuroSAT")
    assert all(e["source"] == "ImageNet" for e in entries.values())


def target_features(layout: RunLayout, label: str, cache_dir: Path, config) -> tuple[torch.Tensor, np.ndarray, list]:
    records = read_records(layout.target(label).test)
    ctx = RunContext(config)
    x, y = load_features(ctx.cache, records)
    return x, y.numpy(), records


@pytest.mark.parametrize("method", ["linear_probe", "coop"])
def test_subset_targets_use_the_source_logits_at_their_classes(dg_run, method: str) -> None:
    """ImageNet-A's classes are ImageNet's labels 1 and 2: its logits are those two columns of the head's."""
    layout, info = dg_run
    config = info["config"]
    x, labels, records = target_features(layout, "ImageNetA", Path(config.cache.dir), config)
    assert [r.class_name for r in records] == [n for _, n in info["images"]["ImageNetA"]]
    head, meta = load_head(layout.heads / method / "shot_1-seed_1")
    assert meta["class_names"] == IMAGENET_NAMES
    expected = head.logits(x)[:, [1, 2]].detach().numpy()
    stored = np.load(layout.predictions / method / "shot_1-seed_1-ImageNetA.logits.npy")
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)
    accuracy = float((expected.argmax(-1) == labels).mean())
    row = next(
        r for r in read_csv(layout.summary) if (r["method"], r["seed"], r["split"]) == (method, "1", "ImageNetA")
    )
    assert float(row["accuracy"]) == pytest.approx(accuracy, abs=1e-6)


def test_coop_subset_equals_its_classifier_built_over_the_target_names(dg_run) -> None:
    """CoOp's own code builds the prompts of ImageNet-A's class names; the kept columns are the same numbers."""
    layout, info = dg_run
    config = info["config"]
    x, _, _ = target_features(layout, "ImageNetR", Path(config.cache.dir), config)
    head, _ = load_head(layout.heads / "coop" / "shot_1-seed_2")
    rebuilt = head.transfer(RunContext(config).backbone, [IMAGENET_NAMES[1], IMAGENET_NAMES[2]]).logits(x)
    stored = np.load(layout.predictions / "coop" / "shot_1-seed_2-ImageNetR.logits.npy")
    np.testing.assert_allclose(stored, rebuilt.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_cross_dataset_rows_come_from_the_transferred_head(dg_run) -> None:
    layout, info = dg_run
    config = info["config"]
    x, labels, _ = target_features(layout, "EuroSAT", Path(config.cache.dir), config)
    head, _ = load_head(layout.heads / "coop" / "shot_1-seed_1")
    logits = head.transfer(RunContext(config).backbone, readable_classes("EuroSAT")).logits(x).detach().numpy()
    stored = np.load(layout.predictions / "coop" / "shot_1-seed_1-EuroSAT.logits.npy")
    np.testing.assert_allclose(stored, logits, rtol=1e-4, atol=1e-4)


def test_report_has_one_table_per_protocol_with_source_targets_and_cannot_transfer(dg_run) -> None:
    layout, _ = dg_run
    rows = read_csv(layout.aggregate / "targets_table.csv")
    accuracy = {(r["method"], r["split"]): r for r in read_csv(layout.aggregate / "accuracy_table.csv")}
    dg = [r for r in rows if r["protocol"] == "domain_generalisation" and r["method"] == "coop"]
    assert [(r["dataset"], r["role"]) for r in dg] == [
        ("ImageNet", "source"),
        *((v, "target") for v in VARIANTS),
        ("Average (targets)", "average"),
    ]
    assert dg[0]["accuracy_mean"] == accuracy[("coop", "test")]["accuracy_mean"]
    assert dg[3]["accuracy_std"] == accuracy[("coop", "ImageNetA")]["accuracy_std"] and dg[3]["n_seeds"] == "2"
    target_means = [float(accuracy[("coop", v)]["accuracy_mean"]) for v in VARIANTS]
    assert float(dg[-1]["accuracy_mean"]) == pytest.approx(sum(target_means) / 4, abs=1e-6)
    xd = {(r["method"], r["dataset"]): r for r in rows if r["protocol"] == "cross_dataset"}
    assert xd[("linear_probe", "EuroSAT")]["note"] == "cannot transfer"
    assert (
        xd[("linear_probe", "EuroSAT")]["accuracy_mean"] == ""
        and xd[("linear_probe", "Average (targets)")]["accuracy_mean"] == ""
    )
    assert xd[("coop", "EuroSAT")]["accuracy_mean"] == accuracy[("coop", "EuroSAT")]["accuracy_mean"]
    page = layout.report.read_text()
    assert "<h3>Domain generalisation</h3>" in page and "<h3>Cross-dataset transfer</h3>" in page
    assert ('data-dataset="EuroSAT" data-method="linear_probe" data-shots="1">cannot transfer</span>') in page
    mean, std = (
        float(accuracy[("coop", "ImageNetA")]["accuracy_mean"]),
        float(accuracy[("coop", "ImageNetA")]["accuracy_std"]),
    )
    assert (
        f'data-dataset="ImageNetA" data-method="coop" data-shots="1">{100 * mean:.2f} ± {100 * std:.2f}</span>' in page
    )


def test_compare_shows_source_targets_and_their_average_with_cannot_transfer(dg_run, tmp_path: Path) -> None:
    import csv

    from fewclip.report.compare import write_compare

    layout, _ = dg_run
    written = write_compare([layout.root], tmp_path / "cmp")
    with open(written["csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = {(r["method"], r["split"]): r for r in read_csv(layout.aggregate / "accuracy_table.csv")}

    def pct(value: str) -> float:
        return pytest.approx(100 * float(value), abs=1e-3)  # accuracy_table.csv keeps 6 decimals

    few_shot = [r for r in rows if r["protocol"] == "few_shot"]
    assert {r["dataset"] for r in few_shot} == {"ImageNet"}  # target rows stay out of the few-shot table
    dg = {(r["dataset"], r["method"]): r for r in rows if r["protocol"] == "domain_generalisation"}
    assert {d for d, _ in dg} == {"ImageNet", *VARIANTS, "Average (targets)"}
    assert float(dg[("ImageNetSketch", "coop")]["mean"]) == pct(accuracy[("coop", "ImageNetSketch")]["accuracy_mean"])
    assert float(dg[("ImageNetSketch", "coop")]["std"]) == pct(accuracy[("coop", "ImageNetSketch")]["accuracy_std"])
    assert float(dg[("ImageNet", "coop")]["mean"]) == pct(accuracy[("coop", "test")]["accuracy_mean"])
    average = sum(float(accuracy[("coop", v)]["accuracy_mean"]) for v in VARIANTS) / 4
    assert float(dg[("Average (targets)", "coop")]["mean"]) == pytest.approx(100 * average, abs=1e-3)
    xd = {(r["dataset"], r["method"]): r for r in rows if r["protocol"] == "cross_dataset"}
    assert (
        xd[("EuroSAT", "linear_probe")]["note"] == "cannot transfer" and xd[("EuroSAT", "linear_probe")]["mean"] == ""
    )
    assert ("Average (targets)", "linear_probe") not in xd
    assert float(xd[("EuroSAT", "coop")]["mean"]) == pct(accuracy[("coop", "EuroSAT")]["accuracy_mean"])
    page = written["html"].read_text()
    assert "Domain generalisation (source and targets)" in page and "<th>ImageNet (source)</th>" in page
    assert "<td>cannot transfer</td>" in page
    assert page.count(f'<td class="text">{layout.root}</td>') == 1  # the run is listed once
