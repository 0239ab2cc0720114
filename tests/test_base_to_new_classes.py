"""Base-to-new with three new classes: the new split's logits, accuracy and ECE against an independent
computation (a one-new-class test always predicts the only class right, so it cannot fail)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.backbones import ModelConfig, load_backbone
from fewclip.world.toy import build_shapes_dataset
from fewclip.fileio import read_csv
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import run

# sorted: base = blue_circle, blue_square, green_circle; new = green_triangle, red_square, yellow_triangle
CLASSES = ["red_square", "blue_circle", "green_triangle", "yellow_triangle", "green_circle", "blue_square"]
NEW = ["green_triangle", "red_square", "yellow_triangle"]
TEMPLATES = ["a photo of a {}.", "the {}."]


def reference_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE written out directly: bin m holds confidences in ((m-1)/M, m/M], bin 1 also 0."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    members = np.maximum(np.ceil(confidence * n_bins).astype(int) - 1, 0)
    return sum(
        abs(correct[members == m].mean() - confidence[members == m].mean()) * (members == m).sum()
        for m in range(n_bins)
        if (members == m).any()
    ) / len(labels)


def saved_new_split(layout: RunLayout, method: str) -> tuple[list[dict[str, str]], np.ndarray]:
    unit = "shot_0-seed_0" if method == "zero_shot" else "shot_2-seed_1"  # zero-shot uses no images
    stem = layout.predictions / method / f"{unit}-new"
    with open(stem.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows, np.load(stem.with_suffix(".logits.npy"))


def test_new_split_of_three_classes_matches_an_independent_computation(
    make_config: Callable[..., Any], tiny_clip: Path, tmp_path: Path
) -> None:
    data = build_shapes_dataset(tmp_path / "six", CLASSES, 8, 6, seed=3)
    config = make_config(
        "methods=[zero_shot,coop]",
        "splits.subsample=base2new",
        "few_shot.shots=[2]",
        "coop.epochs=2",
        "coop.n_ctx=2",
        dataset={"source": "folder", "path": str(data)},
        prompts={"templates": TEMPLATES},
    )
    run(config)
    layout = RunLayout(Path(config.output.dir))
    summary = {(r["method"], r["split"]): r for r in read_csv(layout.summary)}

    # zero-shot on the new classes, recomputed from the images and the new class names alone
    backbone = load_backbone(ModelConfig(id=str(tiny_clip)))
    rows, saved_logits = saved_new_split(layout, "zero_shot")
    assert len(rows) == 3 * 6 and saved_logits.shape == (18, 3)
    folders = [Path(r["path"]).parent.name for r in rows]
    assert sorted(set(folders)) == NEW
    labels = np.array([NEW.index(name) for name in folders])
    pixels = torch.from_numpy(
        np.stack(
            [
                backbone.transform(Image.open(data / "test" / f / Path(r["path"]).name).convert("RGB"))
                for f, r in zip(folders, rows)
            ]
        )
    )
    image = torch.nn.functional.normalize(backbone.encode_images(pixels), dim=-1)
    names = [n.replace("_", " ") for n in NEW]
    text = torch.nn.functional.normalize(backbone.encode_text([t.format(n) for t in TEMPLATES for n in names]), dim=-1)
    prototypes = torch.nn.functional.normalize(text.reshape(len(TEMPLATES), 3, -1).mean(0), dim=-1)
    expected = (backbone.logit_scale * image @ prototypes.T).numpy()
    np.testing.assert_allclose(saved_logits, expected, rtol=1e-4, atol=1e-4)
    assert [int(r["label"]) for r in rows] == labels.tolist()

    for method in ("zero_shot", "coop"):
        rows, saved_logits = saved_new_split(layout, method)
        labels = np.array([NEW.index(Path(r["path"]).parent.name) for r in rows])
        predictions = saved_logits.argmax(axis=1)
        assert [int(r["pred"]) for r in rows] == predictions.tolist()
        assert {r["pred_name"] for r in rows} <= {n.replace("_", " ") for n in NEW}
        shots = "0" if method == "zero_shot" else "2"
        row = summary[(method, "new")]
        assert row["shots"] == shots and int(row["n_eval"]) == 18
        assert float(row["accuracy"]) == pytest.approx(float((predictions == labels).mean()), abs=1e-6)
        assert float(row["ece"]) == pytest.approx(reference_ece(saved_logits, labels), abs=2e-6)
