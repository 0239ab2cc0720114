"""bench/gpu.py: its smoke mode (a tiny CLIP on the CPU) runs every row of the GPU table -- five heads at fp32 and
bf16, the features forward and stage -- and prints the table it writes; a full run is planned at ImageNet scale
with the papers' batch sizes and writes to bench/results only on a GPU. Not timed."""

from __future__ import annotations

import collections
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from fewclip.world.toy import write_byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["coop", "cocoop", "clip_lora", "clip_svd", "promptsrc"]


def table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's body rows in ``text``."""
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # the first is the header


def test_smoke_run_prints_and_writes_a_row_per_method_and_precision(tmp_path: Path) -> None:
    results = ROOT / "bench" / "results" / "gpu.csv"
    before = results.stat().st_mtime_ns if results.exists() else None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--work", str(tmp_path / "work")]
    out = subprocess.run(
        command + ["--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "out" / "gpu.csv", newline="") as table:
        reader = csv.DictReader(table)
        rows = list(reader)
    assert reader.fieldnames == [
        "method",
        "precision",
        "batch",
        "classes",
        "step_ms",
        "data_ms",
        "images_per_s",
        "peak_mib",
        "device",
    ]
    features = ["features: forward", "features: stage"]
    assert [(r["method"], r["precision"]) for r in rows] == [(m, p) for m in METHODS for p in ("fp32", "bf16")] + [
        (m, p) for p in ("fp32", "bf16") for m in features
    ]
    for row in rows:
        step_ms, batch = float(row["step_ms"]), int(row["batch"])
        assert step_ms > 0 and float(row["peak_mib"]) > 0 and row["device"] == rows[0]["device"] != ""
        # training: the batch over the median step; features: 4 images in 2 batches of 2 over the pass
        assert float(row["images_per_s"]) == pytest.approx(1000 * batch / step_ms, rel=1e-9)
        assert batch == 2
        assert row["classes"] == ("" if row["method"] in features else "4")
        assert (row["data_ms"] != "") == (row["method"] in {"clip_lora", "clip_svd", "promptsrc"})
    printed, written = table_rows(out.stdout), table_rows((tmp_path / "out" / "gpu.md").read_text())
    assert printed == written and len(printed) == len(rows)
    for cells, row in zip(printed, rows):
        assert cells[:4] == [row["method"], row["precision"], row["batch"], row["classes"] or "-"]
        assert float(cells[4]) == pytest.approx(float(row["step_ms"]), abs=0.051)
        assert cells[8] == row["device"]
    assert (results.stat().st_mtime_ns if results.exists() else None) == before  # the smoke run left results alone


def test_a_full_run_is_imagenet_scale_at_the_papers_batches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu

    args = gpu.parse_args([])
    rows = gpu.training_rows(args)
    assert [(r["method"], r["precision"], r["batch"]) for r in rows] == [
        (method, precision, batch)
        for method, batch in zip(METHODS, [32, 1, 32, 32, 4])
        for precision in ("fp32", "bf16")
    ]
    for row in rows:  # warm-up + timed steps, one step an epoch, at the row's precision
        config = row["config"]
        steps = config.iterations_per_shot if row["method"] in {"clip_lora", "clip_svd"} else config.epochs
        assert steps == args.warmup + args.steps == 7 and config.precision == row["precision"]
    stem, make_config, size = gpu.model_spec(args.smoke)
    vision, text = make_config(600).vision_config, make_config(600).text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (768, 12, 16, 224)
    assert (text.hidden_size, text.num_hidden_layers, text.max_position_embeddings, text.vocab_size) == (
        512,
        12,
        77,
        49408,
    )
    assert (text.eos_token_id, size) == (599, (500, 375))
    names = gpu.class_names(args.classes)
    assert args.classes == 1000 and len(set(names)) == 1000
    assert collections.Counter(len(name.split()) for name in names) == gpu.IMAGENET_NAME_TOKENS
    write_byte_tokenizer(tmp_path, gpu.tokenizer_words(names), model_max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    counts = [len(tokenizer(name, add_special_tokens=False)["input_ids"]) for name in names]
    assert counts == [len(name.split()) for name in names]  # one token a word: ImageNet's prompt lengths
    assert gpu.output_folder(args, torch.device("cuda")) == ROOT / "bench" / "results"
    for smoke, device in ((False, "cpu"), (True, "cuda")):
        args.smoke = smoke
        folder = gpu.output_folder(args, torch.device(device))
        assert folder != ROOT / "bench" / "results" and folder.is_dir() and not any(folder.iterdir())
        folder.rmdir()
