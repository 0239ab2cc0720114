"""bench/clip_lora_step.py: its smoke mode runs the clip_lora step on the world CLIP, drops the warm-up step and
prints ratios that are the quotients of its own rows; its random CLIP has ViT-B/16's dimensions. Not timed."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_times_only_the_steps_after_warm_up_and_its_ratios_are_its_rows(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "clip_lora_step.py"),
            "--quick",
            "--models",
            "world",
            "--threads",
            "1",
            "--work",
            str(tmp_path),
            "--json",
            str(tmp_path / "rows.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["precision"], r["checkpointing"], r["batch"]) for r in rows] == [
        ("fp32", False, 2),
        ("bf16", False, 2),
        ("fp32", True, 2),
    ]
    for row in rows:
        assert len(row["step_times"]) == 2  # --quick: 1 warm-up step (not timed) + 2 timed
        assert row["s_per_step"] == statistics.median(row["step_times"]) > 0
        assert row["final_train_loss"] == row["final_train_loss"]  # not NaN: the steps trained
    fp32, bf16, checkpointed = rows
    lines = {tuple(line.split()[:3]): line.split() for line in out.stdout.splitlines() if line.startswith("world ")}
    bf16_line, ckpt_line = lines[("world", "bf16", "off")], lines[("world", "fp32", "on")]
    assert float(bf16_line[6]) == pytest.approx(2 / bf16["s_per_step"], abs=0.051)  # img/s
    assert float(bf16_line[8]) == pytest.approx(bf16["s_per_step"] / fp32["s_per_step"], abs=0.0051)  # bf16/fp32
    assert float(ckpt_line[9]) == pytest.approx(checkpointed["s_per_step"] / fp32["s_per_step"], abs=0.0051)
    assert "load average before" in out.stdout and "load average after" in out.stdout


def test_the_random_clip_has_vit_b16_dimensions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from _common import vit_b16_config

    config = vit_b16_config()
    vision, text = config.vision_config, config.text_config
    assert (
        vision.hidden_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
        vision.patch_size,
        vision.image_size,
        vision.intermediate_size,
    ) == (768, 12, 12, 16, 224, 3072)
    assert (
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.intermediate_size,
        text.max_position_embeddings,
        text.vocab_size,
    ) == (512, 12, 8, 2048, 77, 49408)
    assert config.projection_dim == 512
