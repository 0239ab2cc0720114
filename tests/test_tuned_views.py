"""An encoder-tuning head (clip_lora) on every evaluation view: base-to-new's new classes (its transfer),
eval_on subsets (its image logits at the target's columns) and cross-dataset targets, plus its saliency
overlays; each set of logits against an independent computation through the tuned towers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fewclip.backbones import ModelConfig, load_backbone
from fewclip.data.images import read_image
from fewclip.data.records import read_records
from fewclip.world.toy import build_shapes_dataset
from fewclip.fileio import read_csv, read_json
from fewclip.heads import load_head
from fewclip.heads.base import read_head_tensors
from fewclip.heads.encoders.lora_layers import load_adapter, lora_towers
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import run

from tests.data.coop_layout import IMAGENET_CLASSES, build_coop_dataset, build_imagenet_variant, readable_classes

# sorted: base = blue_circle, blue_square, green_circle; new = green_triangle, red_square, yellow_triangle
CLASSES = ["red_square", "blue_circle", "green_triangle", "yellow_triangle", "green_circle", "blue_square"]
NEW = ["green triangle", "red square", "yellow triangle"]
LORA = ("clip_lora.iterations_per_shot=3", "clip_lora.batch_size=4", "clip_lora.lr=0.02", "clip_lora.select=last")


def tuned_reference_logits(stem: Path, model_id: str, names: list[str], images: list[Path]) -> np.ndarray:
    """logit_scale * cos(image, text) with both towers of a fresh LoRA copy of the frozen model carrying the
    saved adapter, the text being the run's first template on ``names``: written out from the saved tensors,
    not through the head or evaluation."""
    backbone = load_backbone(ModelConfig(id=model_id, device="cpu"))
    head, meta = load_head(stem)
    prompts = [meta["templates"][0].format(name) for name in names]
    tensors = read_head_tensors(stem, meta)
    cfg = head.config
    model = lora_towers(backbone, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, seed=123).module  # A is overwritten
    load_adapter(model, {k: v for k, v in tensors.items() if k not in ("logit_scale", "lora_scaling")})
    model.eval()
    pixels = torch.from_numpy(np.stack([backbone.transform(read_image(p)) for p in images]))
    with torch.no_grad():
        tokens = backbone.tokenizer(prompts, padding=True, return_tensors="pt")
        text = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    return (tensors["logit_scale"] * image @ text.T).numpy()


@pytest.fixture(scope="module")
def base2new(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> tuple[RunLayout, Any]:
    from fewclip.runner.config import load_config

    root = tmp_path_factory.mktemp("tuned_b2n")
    data = build_shapes_dataset(root / "six", CLASSES, 8, 6, seed=3)
    config = load_config(
        None,
        ["splits.subsample=base2new", *LORA],
        base={
            "methods": ["zero_shot", "clip_lora"],
            "model": {"id": str(tiny_clip), "batch_size": 16},
            "dataset": {"source": "folder", "path": str(data)},
            "few_shot": {"shots": [2]},
            "splits": {"seeds": [1], "val_per_class": 2},
            "prompts": {"templates": ["a photo of a {}.", "the {}."]},
            "output": {"dir": str(root / "run"), "progress": False, "figures": True, "saliency_images": 3},
            "cache": {"dir": str(root / "cache")},
        },
    )
    run(config)
    return RunLayout(root / "run"), config


def test_base_to_new_writes_clip_lora_new_and_hm_rows(base2new: tuple[RunLayout, Any]) -> None:
    layout, _ = base2new
    rows = read_csv(layout.summary)
    assert {r["split"] for r in rows if r["method"] == "clip_lora"} == {"base", "new", "hm"}
    new = next(r for r in rows if (r["method"], r["split"]) == ("clip_lora", "new"))
    assert int(new["n_eval"]) == 3 * 6
    answer = read_json(layout.answer)  # the report stage's answer speaks of hm, where clip_lora now competes
    assert answer["split"] == "hm"
    hm = next(v for v in answer["budgets"] if (v["split"], v["shots"]) == ("hm", 2))
    assert len(hm["tests"]) == 1 and set(hm["tests"]) <= {"zero_shot", "clip_lora"}  # best vs the other one
    assert "clip_lora" in layout.report.read_text()


def test_new_class_logits_are_the_tuned_towers_on_the_new_prompts(base2new: tuple[RunLayout, Any]) -> None:
    layout, config = base2new
    stem = layout.predictions / "clip_lora" / "shot_2-seed_1-new"
    predictions = read_csv(stem.with_suffix(".csv"))
    stored = np.load(stem.with_suffix(".logits.npy"))
    assert load_head(layout.heads / "clip_lora" / "shot_2-seed_1")[1]["templates"][0] == "a photo of a {}."
    assert stored.shape == (18, 3) and {p["class_name"] for p in predictions} == set(NEW)
    images = [Path(p["path"]) if Path(p["path"]).is_absolute() else layout.data / p["path"] for p in predictions]
    expected = tuned_reference_logits(layout.heads / "clip_lora" / "shot_2-seed_1", config.model.id, NEW, images)
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4)
    zero_shot = np.load(layout.predictions / "zero_shot" / "shot_0-seed_0-new.logits.npy")
    assert not np.allclose(stored, zero_shot, atol=1e-3)  # the tuned towers, not the frozen ones


def test_clip_lora_saliency_overlays_are_written(base2new: tuple[RunLayout, Any]) -> None:
    layout, _ = base2new
    folder = layout.saliency("clip_lora", 2, 1)
    assert (folder / "saliency.png").is_file()
    assert len(read_csv(folder / "saliency.csv")) == 3


def test_transfer_shares_the_tuned_model_and_scores_the_new_names(base2new: tuple[RunLayout, Any]) -> None:
    layout, config = base2new
    head, meta = load_head(layout.heads / "clip_lora" / "shot_2-seed_1")
    backbone = load_backbone(ModelConfig(id=config.model.id, device="cpu"))
    head.attach(backbone, meta["class_names"])
    new = head.transfer(backbone, NEW)
    assert new.model_ is head.model_  # one tuned model: the image tower is not copied for the new classes
    assert head.prompts_ == [f"a photo of a {n}." for n in meta["class_names"]]  # the source head is unchanged
    assert new.prompts_ == [f"a photo of a {n}." for n in NEW]


@pytest.fixture(scope="module")
def dg_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> tuple[RunLayout, Any]:
    """ImageNet trained, evaluated on ImageNet-A (2 of its 3 classes) and EuroSAT (other class names)."""
    from fewclip.runner.config import load_config

    root = tmp_path_factory.mktemp("tuned_dg")
    data = root / "DATA"
    build_imagenet_variant(data, "ImageNetA")
    build_coop_dataset(data, "EuroSAT")
    build_coop_dataset(data, "ImageNet", counts={"train": [4, 4, 4], "test": [2, 2, 2]})
    targets = [{"source": "coop", "path": str(data), "name": n} for n in ("ImageNetA", "EuroSAT")]
    config = load_config(
        None,
        list(LORA),
        base={
            "methods": ["clip_lora"],
            "model": {"id": str(tiny_clip), "batch_size": 16},
            "dataset": {"source": "coop", "path": str(data), "name": "ImageNet", "eval_on": targets},
            "few_shot": {"shots": [1]},
            "splits": {"seeds": [1], "val_per_class": 1},
            "output": {"dir": str(root / "run"), "progress": False, "figures": False},
            "cache": {"dir": str(root / "cache")},
        },
    )
    run(config)
    return RunLayout(root / "run"), config


def target_images(layout: RunLayout, label: str) -> list[Path]:
    return [r.resolve(layout.data) for r in read_records(layout.target(label).test)]


def test_subset_target_is_the_tuned_logits_at_its_columns(dg_run: tuple[RunLayout, Any]) -> None:
    layout, config = dg_run
    stem = layout.heads / "clip_lora" / "shot_1-seed_1"
    names = list(IMAGENET_CLASSES.values())
    assert load_head(stem)[1]["class_names"] == names
    full = tuned_reference_logits(stem, config.model.id, names, target_images(layout, "ImageNetA"))
    stored = np.load(layout.predictions / "clip_lora" / "shot_1-seed_1-ImageNetA.logits.npy")
    np.testing.assert_allclose(stored, full[:, [1, 2]], rtol=1e-4, atol=1e-4)  # ImageNet-A: labels 1 and 2


def test_cross_dataset_target_is_the_transfer_and_every_target_has_rows(dg_run: tuple[RunLayout, Any]) -> None:
    layout, config = dg_run
    stored = np.load(layout.predictions / "clip_lora" / "shot_1-seed_1-EuroSAT.logits.npy")
    expected = tuned_reference_logits(
        layout.heads / "clip_lora" / "shot_1-seed_1",
        config.model.id,
        readable_classes("EuroSAT"),
        target_images(layout, "EuroSAT"),
    )
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4)
    splits = {r["split"] for r in read_csv(layout.summary) if r["method"] == "clip_lora"}
    assert splits == {"test", "ImageNetA", "EuroSAT"}
    assert all(e["cannot_transfer"] == [] for e in read_json(layout.targets)["targets"])
