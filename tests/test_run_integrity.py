"""A run survives damage and kills: damaged heads are retrained by `train` and named by `predict`, the
history is written before the head that marks a unit done, stale temporaries are cleaned, and the
features stage encodes only the images some split or the test set uses."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from fewclip.runner import pipeline
from fewclip.runner.cli import main
from fewclip.data.prepare import load_prepared
from fewclip.data.splits import load_split
from fewclip.runner.layout import RunLayout

PROBE = ("methods=[linear_probe]", "few_shot.shots=[1,2]", "linear_probe.epochs=5", "output.figures=false")


def head_files(layout: RunLayout, shots: int) -> tuple[Path, Path]:
    stem = layout.heads / "linear_probe" / f"shot_{shots}-seed_1"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


@pytest.fixture()
def trained(make_config: Callable[..., Any]) -> tuple[pipeline.RunContext, RunLayout]:
    ctx = pipeline.RunContext(make_config(*PROBE))
    for stage in ("prepare", "features", "train"):
        pipeline.STAGES[stage](ctx)
    return ctx, ctx.layout


def test_train_retrains_damaged_heads_to_the_same_tensors(
    trained: tuple[pipeline.RunContext, RunLayout], caplog: pytest.LogCaptureFixture
) -> None:
    ctx, layout = trained
    zeroed, _ = head_files(layout, 1)
    good = zeroed.read_bytes()
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(zeroed)).items()}, str(zeroed))
    truncated_json = head_files(layout, 2)[1]
    truncated_json.write_text(truncated_json.read_text()[:30])

    with caplog.at_level(logging.WARNING, logger="fewclip.heads.base"):
        assert pipeline.train(ctx) == ["linear_probe/shot_1-seed_1", "linear_probe/shot_2-seed_1"]
    assert f"{zeroed}: damaged head file (its sha256 differs" in caplog.text
    assert f"{truncated_json}: damaged head file (not valid JSON" in caplog.text
    assert zeroed.read_bytes() == good  # the same seed and data give the same head again
    assert pipeline.train(ctx) == []


def test_predict_names_a_damaged_head_and_says_to_retrain(
    trained: tuple[pipeline.RunContext, RunLayout], shapes_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, layout = trained
    tensors, _ = head_files(layout, 2)
    tensors.write_bytes(tensors.read_bytes()[:-7])
    assert main(["-q", "predict", str(layout.root), str(shapes_dir / "test")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"fewclip: error: {tensors}: damaged head file (its sha256 differs from the one recorded when it "
        "was written: truncated or modified); re-run `fewclip train` with the run's config to retrain it\n"
    )


class Killed(BaseException):
    """Stands in for SIGKILL."""


def test_history_is_written_before_the_head_json(
    make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = pipeline.RunContext(make_config(*PROBE, "few_shot.shots=[1]"))
    pipeline.prepare(ctx)
    pipeline.features(ctx)

    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(pipeline, "save_head", killed)
    with pytest.raises(Killed):
        pipeline.train(ctx)
    history = ctx.layout.results / "history" / "linear_probe" / "shot_1-seed_1.csv"
    assert len(history.read_text().splitlines()) == 1 + 5  # header + one row per epoch
    assert not head_files(ctx.layout, 1)[1].exists()
    monkeypatch.undo()
    assert pipeline.train(ctx) == ["linear_probe/shot_1-seed_1"]  # not marked done: trained again


def leave_temporary(target: Path) -> Path:
    """Kill a process in the middle of an atomic write of ``target``: its temporary stays behind."""
    code = (
        "import os, sys; from fewclip import fileio; "
        "os.replace = lambda *a: os._exit(9); fileio.atomic_write_bytes(sys.argv[1], b'partial')"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    assert subprocess.run([sys.executable, "-c", code, str(target)], env=env).returncode == 9
    (temporary,) = target.parent.glob(f".{target.name}.*.tmp")
    return temporary


def test_train_removes_temporaries_of_killed_writers_only(trained: tuple[pipeline.RunContext, RunLayout]) -> None:
    ctx, layout = trained
    tensors, _ = head_files(layout, 1)
    dead = leave_temporary(tensors)
    old_fixed_name = tensors.with_name(tensors.name + ".tmp")  # the fixed name earlier versions used
    old_fixed_name.write_bytes(b"partial")
    os.utime(old_fixed_name, (0, 0))
    host = re.search(r"\.p\d+h([0-9a-f]{8})\.", dead.name)[1]
    live = tensors.with_name(f".{tensors.name}.p{os.getpid()}h{host}.abc.tmp")  # this process: a live writer
    live.write_bytes(b"in progress")
    history_debris = leave_temporary(layout.results / "history" / "linear_probe" / "shot_1-seed_1.csv")

    assert pipeline.train(ctx) == []
    assert not dead.exists() and not old_fixed_name.exists() and not history_debris.exists()
    assert live.exists()


def test_features_encode_exactly_the_split_and_test_images(make_config: Callable[..., Any], tmp_path: Path) -> None:
    ctx = pipeline.RunContext(make_config("few_shot.shots=[1,2]", "splits.seeds=[1,2]"))
    pipeline.prepare(ctx)
    pipeline.features(ctx)
    _, train_full, test = load_prepared(ctx.layout)
    used = {
        r.sha1 for seed in (1, 2) for shots in (1, 2) for part in load_split(ctx.layout, seed, shots) for r in part
    } | {r.sha1 for r in test}
    cached = {k for f in ctx.cache.dir.glob("*.keys") for k in f.read_text().split("\n")[1:] if k}
    assert cached == used
    assert len(used) < len(train_full) + len(test)  # some training images are never encoded
    pipeline.train(ctx)
    pipeline.evaluate(ctx)  # needs nothing else

    larger = pipeline.RunContext(
        make_config("few_shot.shots=[1,4]", "splits.seeds=[1,2]", output={"dir": str(tmp_path / "larger")})
    )
    pipeline.prepare(larger)
    before = len(cached)
    pipeline.features(larger)
    added = {r.sha1 for seed in (1, 2) for part in load_split(larger.layout, seed, 4) for r in part} - used
    after = {k for f in ctx.cache.dir.glob("*.keys") for k in f.read_text().split("\n")[1:] if k}
    assert after == used | added and len(after) == before + len(added) and added


def test_zero_shot_alone_encodes_only_the_test_set(make_config: Callable[..., Any]) -> None:
    ctx = pipeline.RunContext(make_config("methods=[zero_shot]"))
    pipeline.prepare(ctx)
    pipeline.features(ctx)
    _, _, test = load_prepared(ctx.layout)
    cached = {k for f in ctx.cache.dir.glob("*.keys") for k in f.read_text().split("\n")[1:] if k}
    assert cached == {r.sha1 for r in test}
