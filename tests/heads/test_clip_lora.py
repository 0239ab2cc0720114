"""CLIP-LoRA on the tiny CLIP and the shapes images: exact start, frozen weights, learning, resume, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from fewclip.heads import HEADS, Task, load_head, save_head
from fewclip.heads.artifacts import DamagedArtifact
from fewclip.heads.encoders.clip_lora import ClipLoraConfig, ClipLoraHead
from fewclip.heads.contract import contract_problems, fitted_problems
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.runner.layout import RunLayout

from tests.heads.image_tasks import assert_reloads, assert_resumes_as_whole, pixels_of

TEMPLATE = "a photo of a {}."


def config(**changes: Any) -> ClipLoraConfig:
    # the tiny random CLIP learns in a few steps only with a larger rate than the paper's 2e-4 for ViT-B
    values = dict(iterations_per_shot=2, batch_size=8, lr=1e-2, select="last")
    return ClipLoraConfig(**{**values, **changes})


def task(backbone: Any, shapes: dict[str, Any], **changes: Any) -> Task:
    return Task(shapes["classes"], [TEMPLATE], backbone, seed=3, shots=4, **changes)


def test_the_contract_holds_and_defaults_are_the_papers() -> None:
    assert contract_problems(ClipLoraHead) == []
    assert HEADS.get("clip_lora") is ClipLoraHead and ClipLoraHead.tunes_encoders
    cfg = ClipLoraConfig()
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.targets) == (2, 1.0, 0.25, ["q_proj", "k_proj", "v_proj"])
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.iterations_per_shot) == (2e-4, 1e-2, 32, 500)


def test_accumulate_must_divide_the_batch() -> None:
    with pytest.raises(ValueError, match=r"accumulate \(3\) must divide batch_size \(32\)"):
        ClipLoraConfig(accumulate=3)


def test_before_training_the_logits_are_zero_shot_exactly(backbone: Any, shapes: dict[str, Any]) -> None:
    head = ClipLoraHead(config())
    head.template_ = TEMPLATE
    head._build(backbone, seed=0)  # LoRA B starts at zero
    head.prompts_ = [TEMPLATE.format(name) for name in shapes["classes"]]
    head.logit_scale_ = torch.tensor(backbone.logit_scale)
    lora_b = [p for n, p in head.model_.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * 2 * 3  # 2 towers x 2 layers x q/k/v
    assert all(torch.count_nonzero(p) == 0 for p in lora_b)
    pixels = pixels_of(backbone, shapes["test"])
    zero_shot = ZeroShotHead().fit(Task(shapes["classes"], [TEMPLATE], backbone))
    expected = zero_shot.logits(backbone.encode_images(pixels))
    torch.testing.assert_close(head.image_logits(pixels), expected, atol=1e-5, rtol=0)


def test_scoring_encodes_the_class_texts_once_per_adapter_state(
    backbone: Any, shapes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fewclip.heads.encoders.tuned_towers as module

    head = ClipLoraHead(config()).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    pixels = pixels_of(backbone, shapes["test"])
    encode, calls = module.class_text_features, []
    monkeypatch.setattr(module, "class_text_features", lambda *a: calls.append(1) or encode(*a))

    def independent() -> torch.Tensor:  # the text re-encoded now, as training does
        with torch.no_grad():
            return head.train_logits(pixels).float().cpu()

    first = head.image_logits(pixels)
    torch.testing.assert_close(head.image_logits(pixels[:3]), first[:3], atol=1e-5, rtol=0)
    assert len(calls) == 1  # two batches scored, the class texts encoded once
    torch.testing.assert_close(first, independent(), atol=1e-5, rtol=0)
    with torch.no_grad():  # the adapter changes in place: the cached texts must not be used
        for name, param in head.model_.text_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    changed = head.image_logits(pixels)
    assert len(calls) == 3  # re-encoded (plus the independent computation's own)
    torch.testing.assert_close(changed, independent(), atol=1e-5, rtol=0)
    assert not torch.allclose(changed, first, atol=1e-3)
    other = head.transfer(backbone, list(reversed(shapes["classes"])))
    torch.testing.assert_close(other.image_logits(pixels), changed.flip(-1), atol=1e-5, rtol=0)  # its own texts


def test_training_changes_only_lora_and_learns_the_shapes(backbone: Any, shapes: dict[str, Any]) -> None:
    frozen_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    train_pixels = pixels_of(backbone, shapes["train"])
    zero_shot = ZeroShotHead().fit(Task(shapes["classes"], [TEMPLATE], backbone))
    labels = shapes["train"].labels
    zs_accuracy = float((zero_shot.predict(backbone.encode_images(train_pixels)) == labels).float().mean())

    head = ClipLoraHead(config(iterations_per_shot=5)).fit(task(backbone, shapes), shapes["train"], shapes["val"])

    assert all(torch.equal(v, frozen_before[k]) for k, v in backbone.model.state_dict().items())  # backbone untouched
    tuned = head.model_.state_dict()
    for name, value in tuned.items():
        if "lora_" not in name:  # the copy's frozen weights: bit for bit the backbone's
            base = name.replace(".base_layer", "")
            assert torch.equal(value, frozen_before[base]), name
    assert any(torch.count_nonzero(v) for k, v in tuned.items() if "lora_B" in k)
    assert len(head.history_) == 5 and head.best_epoch_ == 5  # 30 images: 4 steps of 8 per epoch, 20 steps
    accuracy = float((head.image_logits(train_pixels).argmax(-1) == labels).float().mean())
    assert accuracy > zs_accuracy, (accuracy, zs_accuracy)
    assert fitted_problems(head) == []
    rank, width, layers = 2, 64, 2
    assert head.trainable_parameters() == 2 * layers * 3 * (rank * width + width * rank)


def test_resume_after_a_kill_equals_an_uninterrupted_run(backbone: Any, shapes: dict[str, Any], tmp_path: Path) -> None:
    cfg = config(iterations_per_shot=2, select="val_loss", accumulate=2)

    def fit(checkpoint: Path, on_epoch: Any) -> ClipLoraHead:
        unit = task(backbone, shapes, checkpoint=checkpoint, on_epoch=on_epoch)
        return ClipLoraHead(cfg).fit(unit, shapes["train"], shapes["val"])

    assert_resumes_as_whole(fit, tmp_path)


def test_saved_head_is_the_adapter_and_reloads_to_the_same_logits(
    backbone: Any, shapes: dict[str, Any], tmp_path: Path
) -> None:
    head = ClipLoraHead(config()).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    assert_reloads(head, backbone, shapes, tmp_path / "shot_4-seed_3", {"templates": [TEMPLATE]})
    assert set(head.state_dict()) - {"logit_scale", "lora_scaling"} == {
        k for k in head.model_.state_dict() if "lora_" in k
    }
    assert float(head.state_dict()["lora_scaling"]) == pytest.approx(head.config.alpha / head.config.rank**0.5)


def test_a_head_trained_with_the_earlier_scaling_is_refused_not_misread(
    backbone: Any, shapes: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adapters saved before fewclip scaled them by alpha / sqrt(rank) would score wrongly under the new scaling."""
    head = ClipLoraHead(config(iterations_per_shot=1)).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    old_state = {k: v for k, v in head.state_dict().items() if k != "lora_scaling"}  # what earlier versions wrote
    monkeypatch.setattr(ClipLoraHead, "state_dict", lambda self: old_state)
    save_head(head, tmp_path / "old", shapes["classes"], {"templates": [TEMPLATE]})
    with pytest.raises(DamagedArtifact, match=r"old\.json: damaged head file \(out of date: .*alpha / rank.*retrain"):
        load_head(tmp_path / "old")


def test_fewclip_run_with_zero_shot_and_clip_lora_then_predict(make_config: Callable[..., Any], tmp_path: Path) -> None:
    import fewclip
    from fewclip.runner.cli import main
    from fewclip.fileio import read_csv

    cfg = make_config(
        "clip_lora.iterations_per_shot=2",
        "clip_lora.batch_size=4",
        "clip_lora.lr=0.01",
        methods=["zero_shot", "clip_lora"],
        few_shot={"shots": [2]},
        output={"figures": False},
    )
    config_file = tmp_path / "lora.yaml"
    config_file.write_text(cfg.to_yaml())
    assert main(["-q", "run", str(config_file)]) == 0
    layout = RunLayout(Path(cfg.output.dir))
    rows = read_csv(layout.summary)

    def cache_files() -> dict[str, bytes]:
        return {
            p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()
        }

    cached = cache_files()
    assert any(name.endswith(".safetensors") or name.endswith(".npy") for name in cached), sorted(cached)[:5]
    layout.unit_evaluation("clip_lora", 2, 1).unlink()  # evaluate the tuned head again: the shared cache stays as is
    assert main(["-q", "evaluate", str(config_file)]) == 0
    assert cache_files() == cached
    lora_rows = [r for r in rows if r["method"] == "clip_lora"]
    assert [(r["shots"], r["seed"], r["split"]) for r in lora_rows] == [("2", "1", "test")]
    root = Path(cfg.output.dir)
    predictions = read_csv(root / "predictions" / "clip_lora" / "shot_2-seed_1-test.csv")
    assert len(predictions) == int(lora_rows[0]["n_eval"]) > 0
    head_files = sorted(p.name for p in (root / "heads" / "clip_lora").iterdir())
    assert head_files == ["shot_2-seed_1.json", "shot_2-seed_1.safetensors"]  # the checkpoint is gone

    classifier = fewclip.load_classifier(root, method="clip_lora")
    data = RunLayout(root).data
    paths = [Path(row["path"]) if Path(row["path"]).is_absolute() else data / row["path"] for row in predictions]
    results = classifier.predict(paths, top_k=1)
    assert [r.label for r in results] == [row["pred_name"] for row in predictions]  # the run's own predictions


def test_batches_are_the_same_whatever_the_workers(backbone: Any, shapes: dict[str, Any]) -> None:
    from fewclip.training.image_batches import epoch_batches, epoch_order

    def batches(workers: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x, y) for x, y, _ in epoch_batches(shapes["train"], backbone.transform, 3, epoch, 8, workers)]

    in_process, two_workers = batches(0, 1), batches(2, 1)
    assert len(in_process) == 4 and [len(y) for _, y in in_process] == [8, 8, 8, 6]
    for (x0, y0), (x2, y2) in zip(in_process, two_workers):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    order = epoch_order(3, 1, 30)
    assert torch.equal(torch.cat([y for _, y in in_process]), shapes["train"].labels[order])
    assert not torch.equal(in_process[0][0], batches(0, 2)[0][0])  # another epoch: another order and crops


def test_accumulation_bf16_and_checkpointing_train(backbone: Any, shapes: dict[str, Any]) -> None:
    """Two micro-batches of 4 give the step of one batch of 8 (no dropout, fp32); bf16 autocast and gradient
    checkpointing train to finite losses."""
    plain = ClipLoraHead(config(dropout=0.0)).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    accumulated = ClipLoraHead(config(dropout=0.0, accumulate=2)).fit(
        task(backbone, shapes), shapes["train"], shapes["val"]
    )
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    checkpointed = ClipLoraHead(config(dropout=0.0, gradient_checkpointing=True)).fit(
        task(backbone, shapes), shapes["train"], shapes["val"]
    )
    assert checkpointed.model_.vision_model.encoder.gradient_checkpointing
    assert not plain.model_.vision_model.encoder.gradient_checkpointing
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    bf16 = ClipLoraHead(config(precision="bf16")).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    assert all(np.isfinite(row["train_loss"]) for row in bf16.history_)


def test_resume_inside_an_epoch_equals_an_uninterrupted_run(
    backbone: Any, shapes: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewclip.training.images_loop import EncoderTrainer

    cfg = config(iterations_per_shot=2, checkpoint_every=1)
    whole = ClipLoraHead(config(iterations_per_shot=2)).fit(task(backbone, shapes), shapes["train"], shapes["val"])

    class Killed(Exception):
        pass

    save, saves = EncoderTrainer.save, []

    def save_then_kill(self: Any, *args: Any, **kwargs: Any) -> None:
        save(self, *args, **kwargs)
        saves.append(args[-1] if len(args) > 5 else kwargs.get("partial"))
        if len(saves) == 6:  # epoch 1 (4 steps, 3 inside + its end), then 2 steps into epoch 2
            raise Killed

    checkpoint = tmp_path / "mid.ckpt"
    monkeypatch.setattr(EncoderTrainer, "save", save_then_kill)
    with pytest.raises(Killed):
        ClipLoraHead(cfg).fit(task(backbone, shapes, checkpoint=checkpoint), shapes["train"], shapes["val"])
    monkeypatch.undo()
    assert saves[-1] is not None and saves[-1]["steps"] == 2  # killed inside epoch 2
    resumed = ClipLoraHead(cfg).fit(task(backbone, shapes, checkpoint=checkpoint), shapes["train"], shapes["val"])
    assert resumed.history_ == whole.history_
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
