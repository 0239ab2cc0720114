"""``fewclip caption run`` end to end on a small world caption set: every file of the layout with its columns,
the untrained baseline, a re-run that changes nothing, a killed training that resumes as if uninterrupted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from fewclip.caption.artifacts import WEIGHTS, load_caption_model
from fewclip.runner.layout import CAPTION_PREDICTION_COLUMNS, CAPTION_SUMMARY_COLUMNS, CaptionLayout
from fewclip.caption.metrics import text_scores
from fewclip.runner.captioning import CHECKPOINT, prepare, train
from fewclip.runner.caption_context import CaptionRun
from fewclip.caption.splits import SPLITS, read_split
from fewclip.runner.cli import main
from fewclip.fileio import read_csv, read_json
from fewclip.heads.artifacts import DamagedArtifact


def write_config(config, path: Path) -> Path:
    path.write_text(config.to_yaml(), encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".fewclip-run.lock"
    }


@pytest.mark.slow
def test_caption_run_writes_the_layout_and_a_rerun_changes_nothing(
    world_caption_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = world_caption_config()
    config_file = write_config(config, tmp_path / "caption.yaml")
    assert main(["-q", "caption", "run", str(config_file)]) == 0
    out = capsys.readouterr().out
    layout = CaptionLayout(tmp_path / "run")
    assert f"results: {layout.summary}" in out and "untrained seed 0: test CIDEr" in out

    # prepare: COCO-format split files, each image with the sha1 of its bytes; images in no two splits
    items = {split: read_split(layout, split) for split in SPLITS}
    assert sum(len(v) for v in items.values()) == 30 and all(items.values())
    assert len({i.sha1 for v in items.values() for i in v}) == 30
    for item in items["test"]:
        assert len(item.captions) == 3
        assert item.sha1 == __import__("hashlib").sha1(item.path.read_bytes()).hexdigest()
    assert read_csv(layout.skipped) == [] and layout.skipped.read_text().startswith("image,reason")
    assert yaml.safe_load(layout.config.read_text())["data"]["world_images"] == 30

    # summary: one row per (method, seed, split), the untrained baseline with nothing trained
    rows = read_csv(layout.summary)
    assert tuple(rows[0]) == CAPTION_SUMMARY_COLUMNS
    assert [(r["method"], r["split"]) for r in rows] == [
        (m, s) for m in ("untrained", "adapter", "prefix", "lora") for s in ("val", "test")
    ]
    untrained = [r for r in rows if r["method"] == "untrained"]
    assert {(r["trainable_params"], float(r["train_seconds"])) for r in untrained} == {("0", 0.0)}
    for row in rows:
        assert int(row["n_eval"]) == len(items[row["split"]])
        assert all(math.isfinite(float(row[c])) for c in ("cider", "clipscore", "refclipscore", "bleu4"))
        if row["method"] != "untrained":
            manifest = read_json(layout.model_dir(row["method"], 0) / "captioner.json")
            assert int(row["trainable_params"]) == manifest["trainable_params"] > 0
            assert float(row["train_seconds"]) > 0

    # predictions: per image, and the summary's CIDEr recomputed from them
    for method in ("untrained", "adapter", "prefix", "lora"):
        for split in ("val", "test"):
            predicted = read_csv(layout.predictions(method, 0, split))
            assert tuple(predicted[0]) == CAPTION_PREDICTION_COLUMNS
            assert [layout.root / p["image"] for p in predicted] == [i.path for i in items[split]]
            assert [p["references"].split(" | ") for p in predicted] == [list(i.captions) for i in items[split]]
            cider = text_scores(
                {p["image"]: p["references"].split(" | ") for p in predicted},
                {p["image"]: p["caption"] for p in predicted},
            ).cider
            summary = next(r for r in rows if (r["method"], r["split"]) == (method, split))
            assert float(summary["cider"]) == pytest.approx(cider, abs=1e-6)
            mean_clip = sum(float(p["clipscore"]) for p in predicted) / len(predicted)
            assert float(summary["clipscore"]) == pytest.approx(mean_clip, abs=1e-5)

        # attention: highest and lowest CLIPScore test images and the first two, each with its panel
        record = read_json(layout.attention_dir(method, 0) / "attention.json")
        test_scores = [float(p["clipscore"]) for p in read_csv(layout.predictions(method, 0, "test"))]
        by_role = {role: e for e in record["images"] for role in e["roles"]}
        assert by_role["highest_clipscore"]["clipscore"] == pytest.approx(max(test_scores), abs=1e-5)
        assert by_role["lowest_clipscore"]["clipscore"] == pytest.approx(min(test_scores), abs=1e-5)
        fixed = [e["image_id"] for e in record["images"] if "fixed" in e["roles"]]
        assert fixed == [i.image_id for i in items["test"][:2]]
        for entry in record["images"]:
            assert entry["panel"] is None or (layout.attention_dir(method, 0) / entry["panel"]).is_file()
            assert len(entry["words"]) >= len(entry["caption"].split()) > 0 or entry["panel"] is None

    # history: one row per epoch; training left no checkpoint behind
    for method in ("adapter", "prefix", "lora"):
        history = read_csv(layout.history(method, 0))
        assert [r["epoch"] for r in history] == ["1.0", "2.0"]
        assert tuple(history[0]) == ("epoch", "train_loss", "lr", "val_cider", "seconds")
        assert not (layout.model_dir(method, 0) / CHECKPOINT).exists()

    before = snapshot(layout.root)
    assert main(["-q", "caption", "run", str(config_file)]) == 0
    assert snapshot(layout.root) == before  # bytes and modification times: nothing was redone


def test_a_killed_training_resumes_as_if_uninterrupted(world_caption_config, tmp_path: Path) -> None:
    """Through the pipeline's train stage: killed at the end of epoch 2 of 3, then run again."""

    def run_for(name: str) -> CaptionRun:
        config = world_caption_config(
            f"output.dir={tmp_path / name}", "methods=[lora]", "training.epochs=3", "training.lr_step_epochs=1"
        )
        run = CaptionRun(config)
        prepare(run)
        return run

    whole = run_for("whole")
    train(whole)

    killed = run_for("killed")

    def kill(method: str, seed: int, row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(killed, on_epoch=kill)
    layout = killed.layout
    assert (layout.model_dir("lora", 0) / CHECKPOINT).is_file() and not (layout.model_dir("lora", 0) / WEIGHTS).exists()
    epochs: list[float] = []
    resumed = CaptionRun(killed.config)
    assert train(resumed, on_epoch=lambda m, s, row: epochs.append(row["epoch"])) == ["lora/seed_0"]
    assert epochs == [2.0, 3.0]  # epoch 1 came from the checkpoint
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_csv(layout.history("lora", 0))) == strip(read_csv(whole.layout.history("lora", 0)))
    state = load_caption_model(layout.model_dir("lora", 0)).trainable_state()
    reference = load_caption_model(whole.layout.model_dir("lora", 0)).trainable_state()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert train(CaptionRun(killed.config)) == []  # trained: skipped


def test_a_changed_recipe_retrains_only_that_method(world_caption_config, tmp_path: Path) -> None:
    config = world_caption_config("methods=[adapter,prefix]", "training.epochs=1")
    run = CaptionRun(config)
    prepare(run)
    assert train(run) == ["adapter/seed_0", "prefix/seed_0"]
    changed = config.model_copy(update={"model": config.model.model_copy(update={"prefix_length": 2})})
    assert train(CaptionRun(changed)) == ["prefix/seed_0"]  # adapter's fit key ignores prefix_length


def test_a_truncated_captioner_is_named_and_trained_again(
    world_caption_config, caplog: pytest.LogCaptureFixture
) -> None:
    run = CaptionRun(world_caption_config("methods=[lora]", "training.epochs=1"))
    prepare(run)
    assert train(run) == ["lora/seed_0"]
    weights = run.layout.model_dir("lora", 0) / WEIGHTS
    intact = load_caption_model(weights.parent).trainable_state()
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        assert train(CaptionRun(run.config)) == ["lora/seed_0"]  # not skipped as trained
    assert f"{weights}: damaged captioner weights" in caplog.text and "training this captioner again" in caplog.text
    retrained = load_caption_model(weights.parent).trainable_state()
    assert retrained.keys() == intact.keys()
    assert train(CaptionRun(run.config)) == []


def test_an_edited_captioner_manifest_is_named_and_trained_again(
    world_caption_config, caplog: pytest.LogCaptureFixture
) -> None:
    run = CaptionRun(world_caption_config("methods=[lora]", "training.epochs=1"))
    prepare(run)
    assert train(run) == ["lora/seed_0"]
    folder = run.layout.model_dir("lora", 0)
    manifest = json.loads((folder / "captioner.json").read_text())
    manifest["seed"] = 7  # the weights would be read into a model built for another seed
    (folder / "captioner.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedArtifact, match="captioner.json: damaged captioner manifest .*edited after training"):
        load_caption_model(folder)
    with caplog.at_level("WARNING"):
        assert train(CaptionRun(run.config)) == ["lora/seed_0"]
    assert "edited after training); training this captioner again" in caplog.text
    assert json.loads((folder / "captioner.json").read_text())["seed"] == 0


def test_prepare_stores_paths_relative_to_the_run(world_caption_config) -> None:
    run = CaptionRun(world_caption_config())
    prepare(run)
    stored = json.loads(run.layout.split_file("train").read_text())["images"][0]["file_name"]
    assert stored.startswith("data/world_captions/images/") and (run.layout.root / stored).is_file()


def test_encoder_tokens_on_the_fly_give_the_cached_results(world_caption_config, tmp_path: Path) -> None:
    """Over the budget, encoder outputs are computed on the fly: the same captions and scores as from the cache."""
    summaries = {}
    for name, budget in (("cached", 2048), ("on_the_fly", 0)):
        config = world_caption_config(
            f"output.dir={tmp_path / name}",
            f"training.cache_budget_mb={budget}",
            f"cache.dir={tmp_path / name / 'cache'}",
            "methods=[prefix]",
            "training.epochs=1",
        )
        config_file = write_config(config, tmp_path / f"{name}.yaml")
        assert main(["-q", "caption", "run", str(config_file)]) == 0
        assert any((tmp_path / name / "cache").rglob("*.npy")) == (budget > 0)
        rows = read_csv(tmp_path / name / "results" / "caption_summary.csv")
        summaries[name] = [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]
        assert main(["-q", "caption", "evaluate", str(tmp_path / name)]) == 0  # a run directory as CONFIG
    assert summaries["cached"] == summaries["on_the_fly"]


def test_decoder_weights_replaced_in_place_retrain(world_caption_config, tmp_path: Path) -> None:
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    from fewclip.world import DECODER

    decoder = tmp_path / "decoder"
    shutil.copytree(DECODER, decoder)
    config = world_caption_config(f"model.decoder={decoder}", "methods=[adapter]", "training.epochs=1")
    prepare(CaptionRun(config))
    assert train(CaptionRun(config)) == ["adapter/seed_0"]
    weights = decoder / "model.safetensors"
    os.utime(weights)  # touched, same bytes: nothing to redo
    assert train(CaptionRun(config)) == []
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert train(CaptionRun(config)) == ["adapter/seed_0"]
