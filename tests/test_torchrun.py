"""``torchrun --nproc-per-node 2 -m fewclip run``: on the CPU with gloo, against a one-process run.

- The embedded default config (world CLIP, every frozen-feature head) plus clip_lora and maple, at one budget
  and seed: every image is encoded once, into the same features; every frozen-feature head is bit-for-bit the
  one-process head; clip_lora (dropout off) and maple, trained with DDP, within 1e-4; the same files and the
  same results.
- A rank killed in the middle of clip_lora: the restarted job keeps the finished units and resumes the unit
  from its checkpoint, ending where an uninterrupted job ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from fewclip.fileio import read_csv

pytestmark = pytest.mark.slow

FROZEN = [
    "zero_shot",
    "linear_probe",
    "coop",
    "cocoop",
    "tip_adapter",
    "tip_adapter_f",
    "clip_adapter",
    "zs_lp",
    "clap",
    "kgcoop",
    "prograd",
]


def fewclip(*args: str, ranks: int = 1, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """``fewclip ARGS`` in one process, or under ``torchrun --standalone --nproc-per-node RANKS``."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    command = [*(launcher if ranks > 1 else [sys.executable]), "-m", "fewclip", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def cache_rows(cache: Path) -> dict[str, np.ndarray]:
    """Every cached image's features, asserting that no image was encoded twice."""
    rows: dict[str, np.ndarray] = {}
    for keys_file in sorted(cache.glob("features/*/*.keys")):
        keys = [line for line in keys_file.read_text().splitlines() if line and not line.startswith("#")]
        array = np.load(keys_file.with_suffix(".npy"))
        for key, row in zip(keys, array):
            assert key not in rows, f"{key} encoded twice"
            rows[key] = row
    return rows


def summary(run: Path) -> dict[tuple[str, ...], dict[str, str]]:
    return {(r["method"], r["shots"], r["seed"], r["split"]): r for r in read_csv(run / "results" / "summary.csv")}


def files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and ".fewclip-run" not in p.name}


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The embedded default at 1 shot, seed 1, plus clip_lora (a few steps, dropout off): 1 process and 2."""
    root = tmp_path_factory.mktemp("torchrun-default")
    runs = {}
    for name, ranks in (("one", 1), ("two", 2)):
        runs[name] = root / name
        check(
            fewclip(
                "run",
                "default",
                f"methods=[{','.join(FROZEN)},clip_lora,maple]",
                "few_shot.shots=[1]",
                # the world CLIP has 4 layers; 8 images: 2 steps of 3 (ranks 2 + 1), the last 2 dropped
                "maple.depth=3",
                "maple.epochs=2",
                "maple.batch_size=3",
                "splits.seeds=[1]",
                "clip_lora.iterations_per_shot=6",
                "clip_lora.batch_size=7",  # 8 images: steps of 7 and 1 (rank 1 gets none)
                "clip_lora.dropout=0",
                "runtime.threads=1",
                "output.figures=false",
                "output.saliency_images=0",
                f"output.dir={runs[name]}",
                f"cache.dir={root / name}-cache",
                ranks=ranks,
            )
        )
    return runs


def test_extraction_is_shared_and_identical(default_runs: dict[str, Path]) -> None:
    one, two = cache_rows(Path(f"{default_runs['one']}-cache")), cache_rows(Path(f"{default_runs['two']}-cache"))
    assert one.keys() == two.keys() and len(one) > 100
    for key, row in one.items():
        assert np.array_equal(row, two[key]), key  # each image encoded in the batch one process puts it in


def test_units_equal_a_one_process_run(default_runs: dict[str, Path]) -> None:
    one, two = default_runs["one"], default_runs["two"]
    assert files(one) == files(two)
    heads = sorted((one / "heads").rglob("*.safetensors"))
    assert len(heads) == len(FROZEN) + 2  # zero-shot once; the others, clip_lora and maple at (1 shot, seed 1)
    for path in heads:
        mine, theirs = load_file(path), load_file(two / path.relative_to(one))
        tuned = "clip_lora" in path.parts or "maple" in path.parts
        tolerance = 1e-4 if tuned else 0.0  # DDP's reduction order; the others exactly
        for name, value in mine.items():
            assert value.numel() == 0 or float((value - theirs[name]).abs().max()) <= tolerance, (path.name, name)
    rows_one, rows_two = summary(one), summary(two)
    assert rows_one.keys() == rows_two.keys() and len(rows_one) >= 2 * (len(FROZEN) + 2)
    for key, row in rows_one.items():
        for column in ("accuracy", "macro_f1", "n_eval", "best_epoch"):
            assert row[column] == rows_two[key][column], (key, column)


def _workers(agent: int) -> dict[int, int]:
    """{rank: pid} of the processes a torchrun agent started."""
    found = {}
    for child in subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(agent)], capture_output=True, text=True
    ).stdout.split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"RANK="):
                found[int(entry[5:])] = int(child)
    return found


def test_a_killed_rank_resumes(tiny_clip: Path, shapes_dir: Path, tmp_path: Path) -> None:
    def config(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "methods": ["linear_probe", "clip_lora"],
                    "model": {"id": str(tiny_clip), "batch_size": 16},
                    "dataset": {"source": "folder", "path": str(shapes_dir)},
                    "few_shot": {"shots": [2]},
                    "splits": {"seeds": [1], "val_per_class": 2},
                    "linear_probe": {"epochs": 20},
                    "clip_lora": {"iterations_per_shot": 40, "batch_size": 4, "checkpoint_every": 1},  # dropout 0.25
                    "runtime": {"threads": 1},
                    "output": {"dir": str(tmp_path / name), "progress": False, "figures": False},
                    "cache": {"dir": str(tmp_path / f"{name}-cache")},
                }
            )
        )
        return path

    check(fewclip("run", str(config("whole")), ranks=2))
    killed = config("killed")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    agent = subprocess.Popen(
        [*launcher, "-m", "fewclip", "run", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=True,
    )  # its own process group: the finally below ends all of it
    checkpoint = tmp_path / "killed" / "heads" / "clip_lora" / "shot_2-seed_1.ckpt.safetensors"
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(_workers(agent.pid)[1], signal.SIGKILL)
        assert agent.wait(timeout=120) != 0  # torchrun stops the job when a rank dies
    finally:
        if agent.poll() is None:  # never leave a job running
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    assert checkpoint.exists() and not checkpoint.with_name("shot_2-seed_1.json").exists()  # killed mid-unit
    probe = tmp_path / "killed" / "heads" / "linear_probe" / "shot_2-seed_1.safetensors"
    before = probe.stat().st_mtime_ns
    check(fewclip("run", str(killed), ranks=2))
    assert probe.stat().st_mtime_ns == before  # the unit finished before the kill is kept
    whole = load_file(tmp_path / "whole" / "heads" / "clip_lora" / "shot_2-seed_1.safetensors")
    resumed = load_file(tmp_path / "killed" / "heads" / "clip_lora" / "shot_2-seed_1.safetensors")
    for name, value in whole.items():  # dropout on: each rank's RNG came back from the checkpoint
        assert float((value - resumed[name]).abs().max()) <= 1e-6, name
    assert not checkpoint.exists()
    history = [
        read_csv(tmp_path / run / "results" / "history" / "clip_lora" / "shot_2-seed_1.csv")
        for run in ("whole", "killed")
    ]
    assert [r["val_accuracy"] for r in history[0]] == [r["val_accuracy"] for r in history[1]]


def test_every_rank_reports_a_refused_run_directory(tiny_clip: Path, shapes_dir: Path, tmp_path: Path) -> None:
    """Rank 0 claims the run directory; when it is refused, every rank stops with that message."""
    taken = tmp_path / "someone-elses"
    taken.mkdir()
    (taken / "notes.txt").write_text("not a fewclip run")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "methods": ["zero_shot"],
                "model": {"id": str(tiny_clip)},
                "dataset": {"source": "folder", "path": str(shapes_dir)},
                "output": {"dir": str(taken)},
                "cache": {"dir": str(tmp_path / "cache")},
            }
        )
    )
    result = fewclip("prepare", str(config), ranks=2, timeout=120)
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if line.startswith("fewclip: error:")]
    assert len(refusals) == 2 and all(str(taken) in line for line in refusals), result.stderr[-3000:]
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]  # nothing written there
