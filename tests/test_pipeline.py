"""The whole run: stages end to end, their files, skipping finished work, the CLI, and resuming after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml

from fewclip.runner import pipeline
from fewclip.backbones import CLIPBackbone
from fewclip.runner.cli import main
from fewclip.runner.config import load_config
from fewclip.data.prepare import load_prepared
from fewclip.world.toy import build_shapes_dataset, build_tiny_clip
from fewclip.features import load_features
from fewclip.heads import LinearProbeHead, load_head
from fewclip.runner.layout import RunLayout

REQUIRED_COLUMNS = {"method", "shots", "seed", "split", "accuracy", "macro_f1", "trainable_params", "train_seconds"}
UNITS = [("zero_shot", 0, 0), ("linear_probe", 1, 1), ("linear_probe", 2, 1), ("linear_probe", 4, 1)]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Independent of fewclip.metrics: mean over true classes of 2 tp / (2 tp + fp + fn)."""
    scores = []
    for c in np.unique(y_true):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp, fn = np.sum((y_pred == c) & (y_true != c)), np.sum((y_pred != c) & (y_true == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def unit_of(row: dict[str, str]) -> tuple[str, int, int]:
    return row["method"], int(row["shots"]), int(row["seed"])


@pytest.fixture()
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts image-encoder forward passes by any backbone from here on (whether or not one gets loaded)."""
    calls: list[int] = []
    original = CLIPBackbone.encode_images

    def counting(self: CLIPBackbone, pixels: torch.Tensor) -> torch.Tensor:
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(CLIPBackbone, "encode_images", counting)
    return calls


@pytest.fixture()
def finished_run(make_config: Callable[..., Any]) -> tuple[Any, RunLayout]:
    config = make_config()
    summary = pipeline.run(config)
    layout = RunLayout(Path(config.output.dir))
    assert summary == layout.summary
    return config, layout


def test_first_run_encodes_every_used_image_once(make_config: Callable[..., Any], encoder_calls: list[int]) -> None:
    pipeline.run(make_config())
    # 3 classes x (4 shots + 2 val) split images and 18 test images, in batches of 16; 18 of the 36
    # training images are in no split and are never encoded
    assert sum(encoder_calls) == 36 and len(encoder_calls) == 3


def test_summary_has_one_row_per_unit_with_the_required_columns(finished_run: tuple[Any, RunLayout]) -> None:
    config, layout = finished_run
    rows = read_rows(layout.summary)
    assert REQUIRED_COLUMNS <= set(rows[0])
    assert sorted((*unit_of(r), r["split"]) for r in rows) == sorted((*u, "test") for u in UNITS)
    for row in rows:
        assert row["trainable_params"] == ("0" if row["method"] == "zero_shot" else str(32 * 3 + 3))
        assert float(row["train_seconds"]) >= 0
        assert row["n_eval"] == "18"


def test_summary_metrics_equal_those_recomputed_from_predictions(finished_run: tuple[Any, RunLayout]) -> None:
    config, layout = finished_run
    classes, _, test_records = load_prepared(layout)
    for row in read_rows(layout.summary):
        method, shots, seed = unit_of(row)
        stem = layout.predictions / method / f"shot_{shots}-seed_{seed}-test"
        predictions = read_rows(stem.with_suffix(".csv"))
        assert [p["path"] for p in predictions] == [r.path for r in test_records]
        labels = np.array([int(p["label"]) for p in predictions])
        pred = np.array([int(p["pred"]) for p in predictions])
        assert labels.tolist() == [r.label for r in test_records]
        assert [p["pred_name"] for p in predictions] == [classes.readable[i] for i in pred]
        assert row["accuracy"] == f"{np.mean(labels == pred):.6f}"
        assert row["macro_f1"] == f"{macro_f1(labels, pred):.6f}"
        logits = np.load(stem.with_suffix(".logits.npy"))
        assert logits.shape == (18, 3)
        assert (logits.argmax(axis=1) == pred).all()
        confidence = torch.softmax(torch.from_numpy(logits), -1).max(-1).values.numpy()
        np.testing.assert_allclose([float(p["confidence"]) for p in predictions], confidence, atol=1e-6)


def test_per_class_and_template_tables(finished_run: tuple[Any, RunLayout]) -> None:
    config, layout = finished_run
    per_class = read_rows(layout.results / "per_class.csv")
    assert len(per_class) == len(UNITS) * 3
    for row in per_class:
        method, shots, seed = unit_of(row)
        predictions = read_rows(layout.predictions / method / f"shot_{shots}-seed_{seed}-test.csv")
        mine = [p for p in predictions if p["class_name"] == row["class_name"]]
        assert row["support"] == str(len(mine)) == "6"
        assert row["recall"] == f"{sum(p['pred_name'] == p['class_name'] for p in mine) / len(mine):.6f}"

    templates = read_rows(layout.results / "zero_shot_templates.csv")
    assert [t["template"] for t in templates] == config.prompts.templates + ["<ensemble>"]
    zero_shot = next(r for r in read_rows(layout.summary) if r["method"] == "zero_shot")
    assert templates[-1]["accuracy"] == zero_shot["accuracy"]
    # each template's accuracy is what that template's own logits give
    ctx = pipeline.RunContext(config)
    _, _, test_records = load_prepared(layout)
    features, labels = load_features(ctx.cache, test_records)
    head, _ = load_head(layout.heads / "zero_shot" / "shot_0-seed_0")
    for row, logits in zip(templates, head.template_logits(features)):
        assert row["accuracy"] == f"{(logits.argmax(-1) == labels).float().mean().item():.6f}"


def test_run_dir_holds_resolved_config_heads_and_history(finished_run: tuple[Any, RunLayout]) -> None:
    config, layout = finished_run
    assert load_config(layout.config) == config
    assert yaml.safe_load(layout.config.read_text())["model"]["batch_size"] == 16
    head_files = sorted(p.relative_to(layout.heads).as_posix() for p in layout.heads.rglob("*") if p.is_file())
    assert head_files == sorted(f"{m}/shot_{k}-seed_{s}.{ext}" for m, k, s in UNITS for ext in ("json", "safetensors"))
    for shots in (1, 2, 4):
        history = read_rows(layout.results / "history" / "linear_probe" / f"shot_{shots}-seed_1.csv")
        assert len(history) == config.linear_probe.epochs
        assert list(history[0]) == ["epoch", "train_loss", "val_accuracy", "val_macro_f1", "val_loss"]


def test_second_run_skips_training_and_extraction(
    finished_run: tuple[Any, RunLayout], encoder_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, layout = finished_run
    summary_before = layout.summary.read_text()
    heads_before = {p: p.stat().st_mtime_ns for p in layout.heads.rglob("*") if p.is_file()}
    fits: list[Any] = []
    monkeypatch.setattr(LinearProbeHead, "fit", lambda self, *a, **k: fits.append(a) or self)

    ctx = pipeline.RunContext(config)
    pipeline.prepare(ctx)
    assert pipeline.features(ctx) == 0
    assert pipeline.train(ctx) == []
    pipeline.evaluate(ctx)

    assert encoder_calls == [] and fits == []
    assert layout.summary.read_text() == summary_before  # train_seconds too: read back from the saved heads
    assert {p: p.stat().st_mtime_ns for p in layout.heads.rglob("*") if p.is_file()} == heads_before


def test_changed_training_config_retrains_only_the_probe(
    finished_run: tuple[Any, RunLayout], encoder_calls: list[int], make_config: Callable[..., Any]
) -> None:
    _, layout = finished_run
    ctx = pipeline.RunContext(make_config("linear_probe.epochs=5"))
    pipeline.prepare(ctx)
    pipeline.features(ctx)
    assert pipeline.train(ctx) == [f"linear_probe/shot_{k}-seed_1" for k in (1, 2, 4)]
    assert encoder_calls == []
    pipeline.evaluate(ctx)
    assert len(read_rows(layout.results / "history" / "linear_probe" / "shot_4-seed_1.csv")) == 5


# --- CLI ------------------------------------------------------------------------------------------


def out_mentions(capsys: pytest.CaptureFixture[str], text: str) -> bool:
    return text in capsys.readouterr().out


@pytest.fixture()
def config_file(make_config: Callable[..., Any], tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(make_config().to_yaml())
    return path


def test_cli_runs_a_yaml_config_with_dotted_overrides(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["-q", "run", str(config_file), "few_shot.shots=[1,2]", "methods=[linear_probe]", "linear_probe.epochs=3"])
        == 0
    )
    layout = RunLayout(tmp_path / "run")
    out = capsys.readouterr().out  # ends with the answer in a few plain lines, not the summary.csv dump
    plain = json.loads(layout.answer.read_text())["plain"]
    assert 1 <= len(plain) <= 3 and out.splitlines()[-2 - len(plain) :] == [
        *plain,
        f"table: {layout.aggregate / 'accuracy_table.csv'}",
        f"report: {layout.report}",
    ]
    assert "method,shots,seed" not in out and "labelled image per class, linear_probe reaches" in out
    assert sorted(unit_of(r) for r in read_rows(layout.summary)) == [("linear_probe", 1, 1), ("linear_probe", 2, 1)]
    resolved = load_config(layout.config)
    assert resolved.few_shot.shots == [1, 2] and resolved.methods == ["linear_probe"]
    assert resolved.linear_probe.epochs == 3 and resolved.output.progress is False  # -q
    assert len(read_rows(layout.results / "history" / "linear_probe" / "shot_2-seed_1.csv")) == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["run", "{cfg}", "linear_probe.epoch=5"],
            "linear_probe.epoch: unknown key; did you mean 'linear_probe.epochs'?",
        ),
        (["run", "{cfg}", "methods=[linaer_probe]"], "did you mean 'linear_probe'?"),
        (["run", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
        (["run", "{cfg}", "model.id={tmp}/no-model"], "model.id: model folder {tmp}/no-model does not exist"),
        (["train", "{cfg}"], "run `fewclip prepare` with this config first"),
    ],
)
def test_cli_reports_a_bad_config_and_returns_2(
    argv: list[str], message: str, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(cfg=config_file, tmp=tmp_path) for a in argv]
    assert main(["-q", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fewclip: error: ")
    assert message.format(tmp=tmp_path) in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "run" / "results").exists()


# --- killed and resumed ---------------------------------------------------------------------------


def cache_keys(cache_dir: Path) -> dict[str, list[str]]:
    """{shard: image sha1s} for every committed shard under a cache dir."""
    return {
        p.stem: [k for k in p.read_text().split("\n") if k and not k.startswith("#")]  # "#sha256 ..." header
        for p in cache_dir.glob("features/*/*.keys")
    }


def summary_without_timing(path: Path) -> list[dict[str, str]]:
    rows = read_rows(path)
    assert rows and all(float(r.pop("train_seconds")) >= 0 for r in rows)
    return rows


@pytest.mark.slow
def test_run_killed_during_extraction_resumes_to_the_same_summary(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    data = build_shapes_dataset(tmp_path / "data", ["red_circle", "green_square", "blue_triangle"], 120, 40)
    model = build_tiny_clip(tmp_path / "model", image_size=64, width=128, layers=4)  # ~60 ms per batch of 8

    def write_config(name: str) -> Path:
        config = make_config(
            "few_shot.shots=[1,4]",
            model={"id": str(model), "batch_size": 8, "device": "cpu"},  # cpu: slow enough on any machine
            dataset={"source": "folder", "path": str(data)},
            output={"dir": str(tmp_path / name / "run")},
            cache={"dir": str(tmp_path / name / "cache")},
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(config.to_yaml())
        return path

    def command(config: Path) -> list[str]:
        return [sys.executable, "-m", "fewclip.runner.cli", "-q", "run", str(config)]

    killed_config, fresh_config = write_config("killed"), write_config("fresh")
    cache = tmp_path / "killed" / "cache"
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen(command(killed_config), stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.monotonic() + 180
    while len(cache_keys(cache)) < 3:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{(tmp_path / 'killed.log').read_text()}")
        assert time.monotonic() < deadline, "no feature shard appeared in time"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    log.close()

    before = cache_keys(cache)
    layout = RunLayout(tmp_path / "killed" / "run")
    distinct = {r.sha1 for r in pipeline.used_records(pipeline.RunContext(load_config(killed_config)))}
    assert len(distinct) == 3 * (4 + 2) + 120  # the 4-shot splits with their val images, and the test set
    assert 3 * 8 <= sum(map(len, before.values())) < len(distinct)  # killed mid-extraction
    print(f"killed after {sum(map(len, before.values()))} of {len(distinct)} images")
    assert not layout.summary.exists()

    subprocess.run(command(killed_config), check=True, capture_output=True, env=os.environ.copy())
    subprocess.run(command(fresh_config), check=True, capture_output=True, env=os.environ.copy())

    after = cache_keys(cache)
    assert all(after[shard] == keys for shard, keys in before.items())  # shards from before the kill were kept
    all_keys = [key for keys in after.values() for key in keys]
    assert len(all_keys) == len(set(all_keys)) == len(distinct) and set(all_keys) == distinct  # none recomputed
    assert sum(map(len, cache_keys(tmp_path / "fresh" / "cache").values())) == len(distinct)

    resumed = summary_without_timing(layout.summary)
    fresh = summary_without_timing(tmp_path / "fresh" / "run" / "results" / "summary.csv")
    assert len(resumed) == 3  # zero_shot + linear_probe at 1 and 4 shots
    assert resumed == fresh
