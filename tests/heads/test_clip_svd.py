"""CLIP-SVD on the tiny CLIP and the shapes images (``backbone`` and ``shapes`` from ``tests/conftest.py``): the exact start, frozen U and V, what trains and how much of it,
learning, save/reload, transfer to new names, the choice of matrices and the refusal on OpenCLIP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fewclip.heads import HEADS, Task, load_head, save_head
from fewclip.heads.base import normalize
from fewclip.heads.contract import contract_problems, fitted_problems
from fewclip.heads.encoders.clip_svd import ClipSvdConfig, ClipSvdHead, SingularValueLinear
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.runner.config import ConfigError

from tests.heads.image_tasks import pixels_of

TEMPLATE = "a photo of a {}."
WIDTH, LAYERS = 64, 2  # the tiny CLIP's towers: width 64, MLP 4 x 64, 2 blocks each


# the tiny random CLIP moves in a few steps only with a larger rate than the paper's 5e-4 for ViT-B
FAST = dict(iterations_per_shot=2, batch_size=8, lr=2e-2, select="last")


def config(**changes: Any) -> ClipSvdConfig:
    return ClipSvdConfig(**(FAST | changes))


def task(backbone: Any, shapes: dict[str, Any], **changes: Any) -> Task:
    return Task(shapes["classes"], [TEMPLATE], backbone, seed=3, shots=4, **changes)


@pytest.fixture(scope="module")
def fitted(backbone: Any, shapes: dict[str, Any]) -> ClipSvdHead:
    """Five epochs of 4 steps (30 images, batches of 8)."""
    return ClipSvdHead(config(iterations_per_shot=5)).fit(task(backbone, shapes), shapes["train"], shapes["val"])


def built(backbone: Any, shapes: dict[str, Any], cfg: ClipSvdConfig) -> ClipSvdHead:
    """A head with its factored copy built and its class prompts set, untrained."""
    head = ClipSvdHead(cfg)
    head.template_ = TEMPLATE
    head._build(backbone, seed=0)
    head.prompts_ = [TEMPLATE.format(name) for name in shapes["classes"]]
    head.logit_scale_ = torch.tensor(backbone.logit_scale)
    return head


def factored(head: ClipSvdHead) -> dict[str, SingularValueLinear]:
    return {n: m for n, m in head.model_.named_modules() if isinstance(m, SingularValueLinear)}


def test_the_contract_holds_and_defaults_are_the_papers() -> None:
    assert contract_problems(ClipSvdHead) == []
    assert HEADS.get("clip_svd") is ClipSvdHead and ClipSvdHead.tunes_encoders and ClipSvdHead.transfers
    cfg = ClipSvdConfig()
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.batch_size, cfg.iterations_per_shot) == (
        5e-4,
        1e-6,
        1e-2,
        32,
        200,
    )
    assert (cfg.towers, cfg.targets, cfg.layers) == (["text", "vision"], ["q", "k", "v", "out", "mlp"], None)
    assert (cfg.drop_last, cfg.augment, cfg.crop_scale) == (False, True, (0.08, 1.0))


def test_before_training_the_copy_is_the_frozen_model_factored(backbone: Any, shapes: dict[str, Any]) -> None:
    head = built(backbone, shapes, config())
    layers = factored(head)
    assert len(layers) == 2 * LAYERS * 6  # q, k, v, out, fc1, fc2 of every block of both towers
    frozen = dict(backbone.model.named_modules())
    for name, layer in layers.items():
        weight = frozen[name].weight
        torch.testing.assert_close(layer.weight, weight, atol=1e-6, rtol=0)  # U diag(s) V^T = W to fp32 rounding
        torch.testing.assert_close(layer.singular_values.detach(), torch.linalg.svdvals(weight), atol=1e-5, rtol=1e-5)
        eye = torch.eye(layer.left.shape[1])
        torch.testing.assert_close(layer.left.T @ layer.left, eye, atol=1e-5, rtol=0)  # orthonormal columns
        torch.testing.assert_close(layer.right @ layer.right.T, eye, atol=1e-5, rtol=0)
        assert layer.bias is not None and not layer.bias.requires_grad
    pixels = pixels_of(backbone, shapes["test"])
    zero_shot = ZeroShotHead().fit(Task(shapes["classes"], [TEMPLATE], backbone))
    expected = zero_shot.logits(backbone.encode_images(pixels))
    torch.testing.assert_close(head.image_logits(pixels), expected, atol=1e-4, rtol=0)


def test_only_the_singular_values_train_and_the_shapes_are_learnt(
    backbone: Any, shapes: dict[str, Any], fitted: ClipSvdHead
) -> None:
    frozen = backbone.model.state_dict()
    head = ClipSvdHead(config())
    untrained = built(backbone, shapes, config())
    trained = {n for n, p in fitted.model_.named_parameters() if p.requires_grad}
    assert trained == {f"{n}.singular_values" for n in factored(fitted)}
    # every block matrix has min(out, in) = 64 singular values: (4 attention + 2 MLP) x 64 per block
    assert fitted.trainable_parameters() == 2 * LAYERS * 6 * WIDTH == 1536
    assert head.trainable_parameters() == 0  # not fitted
    for name, value in fitted.model_.state_dict().items():
        if "singular_values" not in name:  # the copy's other weights and biases: bit for bit the backbone's
            assert torch.equal(value, frozen[name]), name
    for name, layer in factored(fitted).items():  # U and V frozen: the untrained factorisation's
        before = factored(untrained)[name]
        assert torch.equal(layer.left, before.left) and torch.equal(layer.right, before.right), name
        assert not layer.left.requires_grad and not layer.right.requires_grad
    moved = [
        float((fitted.model_.get_parameter(n) - untrained.model_.get_parameter(n)).detach().abs().max())
        for n in trained
    ]
    assert min(moved) > 0  # every singular value vector trained
    assert len(fitted.history_) == 5 and fitted.best_epoch_ == 5
    assert fitted_problems(fitted) == []
    pixels, labels = pixels_of(backbone, shapes["train"]), shapes["train"].labels
    zero_shot = ZeroShotHead().fit(Task(shapes["classes"], [TEMPLATE], backbone))
    zs_accuracy = float((zero_shot.predict(backbone.encode_images(pixels)) == labels).float().mean())
    accuracy = float((fitted.image_logits(pixels).argmax(-1) == labels).float().mean())
    assert accuracy > zs_accuracy, (accuracy, zs_accuracy)


def test_the_saved_head_is_the_singular_values_and_reloads_to_the_same_logits(
    backbone: Any, shapes: dict[str, Any], fitted: ClipSvdHead, tmp_path: Path
) -> None:
    stem = tmp_path / "shot_4-seed_3"
    save_head(fitted, stem, shapes["classes"], {"templates": [TEMPLATE]})
    stored = load_file(stem.with_suffix(".safetensors"))
    assert set(stored) == {f"{n}.singular_values" for n in factored(fitted)} | {"logit_scale"}  # no U, no V
    assert sum(v.numel() for v in stored.values()) == fitted.trainable_parameters() + 1
    loaded, meta = load_head(stem)
    assert loaded.trainable_parameters() == fitted.trainable_parameters() == meta["trainable_params"]
    loaded.attach(backbone, meta["class_names"])
    pixels = pixels_of(backbone, shapes["test"])
    torch.testing.assert_close(loaded.image_logits(pixels), fitted.image_logits(pixels), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="call image_logits"):
        loaded.logits(torch.zeros(2, 32))
    other = ClipSvdHead(config(targets=["q"]))
    other.load_state(stored, meta)
    with pytest.raises(ValueError, match=r"clip_svd: saved trained weights do not fit .*unexpected \['text_model"):
        other.attach(backbone, meta["class_names"])


def test_transfer_scores_new_names_through_the_tuned_text_tower(
    backbone: Any, shapes: dict[str, Any], fitted: ClipSvdHead
) -> None:
    new_names = ["hexagon", "spiral", "cross"]
    other = fitted.transfer(backbone, new_names)
    assert other.model_ is fitted.model_  # the same tuned towers, not a copy
    pixels = pixels_of(backbone, shapes["test"])
    with torch.no_grad():  # written out through the library's own model, the tuned copy
        tokens = backbone.tokenizer([TEMPLATE.format(n) for n in new_names], padding=True, return_tensors="pt")
        text = normalize(fitted.model_.get_text_features(**tokens).pooler_output)
        image = normalize(fitted.model_.get_image_features(pixel_values=pixels).pooler_output)
    expected = backbone.logit_scale * image @ text.T
    torch.testing.assert_close(other.image_logits(pixels), expected, atol=1e-5, rtol=0)
    frozen = ZeroShotHead().fit(Task(new_names, [TEMPLATE], backbone)).logits(backbone.encode_images(pixels))
    assert not torch.allclose(other.image_logits(pixels), frozen, atol=1e-3)  # the tuned towers, not the frozen
    assert other.prompts_ == [TEMPLATE.format(n) for n in new_names] and fitted.prompts_ != other.prompts_


def test_towers_targets_and_layers_choose_what_trains(backbone: Any, shapes: dict[str, Any]) -> None:
    head = built(backbone, shapes, config(towers=["vision"], targets=["v", "mlp"], layers=[1]))
    assert sorted(factored(head)) == [
        "vision_model.encoder.layers.1.mlp.fc1",
        "vision_model.encoder.layers.1.mlp.fc2",
        "vision_model.encoder.layers.1.self_attn.v_proj",
    ]
    head.fit(task(backbone, shapes), shapes["train"])
    assert head.trainable_parameters() == 3 * WIDTH
    prompts = [TEMPLATE.format(n) for n in shapes["classes"]]
    torch.testing.assert_close(  # the text tower is the frozen one
        head.scoring_text(), normalize(backbone.encode_text(prompts)), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match=r"clip_svd.layers: blocks \[2, 5\] do not exist .* below 2"):
        built(backbone, shapes, config(layers=[0, 2, 5]))
    with pytest.raises(ValueError, match="block indices >= 0"):
        ClipSvdConfig(layers=[-1])
    with pytest.raises(ValueError):
        ClipSvdConfig(targets=["mlp", "proj"])


def test_clip_svd_on_open_clip_is_refused_when_the_config_is_loaded(make_config: Any) -> None:
    with pytest.raises(ConfigError, match="clip_svd needs lora_targets, which the open_clip backbone does not offer"):
        make_config("model.library=open_clip", "model.id=RN50", "model.pretrained=openai", "methods=[clip_svd]")


def test_a_base_to_new_run_scores_new_names_and_predict_repeats_it(
    tmp_path: Path, tiny_clip: Path, backbone: Any
) -> None:
    """``fewclip run`` with clip_svd on six classes split base / new: rows for base, new and their harmonic mean;
    ``load_classifier`` predicts the base images as the run did, and the saved head attached to the new names
    gives the run's new logits."""
    import fewclip
    from fewclip.data.images import read_image
    from fewclip.fileio import read_csv
    from fewclip.runner.cli import main
    from fewclip.runner.config import load_config
    from fewclip.runner.layout import RunLayout
    from fewclip.world.toy import build_shapes_dataset

    classes = ["red_circle", "green_square", "blue_triangle", "red_square", "green_triangle", "blue_circle"]
    data = build_shapes_dataset(tmp_path / "six", classes, 8, 4, seed=3)
    config = load_config(
        None,
        ["splits.subsample=base2new", "clip_svd.iterations_per_shot=2", "clip_svd.batch_size=4", "clip_svd.lr=0.02"],
        base={
            "methods": ["zero_shot", "clip_svd"],
            "model": {"id": str(tiny_clip), "batch_size": 16},
            "dataset": {"source": "folder", "path": str(data)},
            "few_shot": {"shots": [2]},
            "splits": {"seeds": [1], "val_per_class": 2},
            "output": {"dir": str(tmp_path / "run"), "progress": False, "figures": False, "saliency_images": 0},
            "cache": {"dir": str(tmp_path / "cache")},
        },
    )
    config_file = tmp_path / "svd.yaml"
    config_file.write_text(config.to_yaml())
    assert main(["-q", "run", str(config_file)]) == 0
    layout = RunLayout(tmp_path / "run")
    assert sorted(r["split"] for r in read_csv(layout.summary) if r["method"] == "clip_svd") == ["base", "hm", "new"]
    predictions = layout.root / "predictions" / "clip_svd"
    base = read_csv(predictions / "shot_2-seed_1-base.csv")
    classifier = fewclip.load_classifier(layout.root, method="clip_svd")
    assert [r.label for r in classifier.predict([Path(r["path"]) for r in base], top_k=1)] == [
        r["pred_name"] for r in base
    ]
    new = read_csv(predictions / "shot_2-seed_1-new.csv")
    names = [name for _, name in sorted({(int(r["label"]), r["class_name"]) for r in new})]
    assert len(names) == 3 and not set(names) & {r["class_name"] for r in base}
    head, _ = load_head(layout.heads / "clip_svd" / "shot_2-seed_1")
    head.attach(backbone, names)
    pixels = torch.from_numpy(np.stack([backbone.transform(read_image(Path(r["path"]))) for r in new]))
    stored = torch.from_numpy(np.load(predictions / "shot_2-seed_1-new.logits.npy"))
    torch.testing.assert_close(head.image_logits(pixels), stored.float(), atol=1e-4, rtol=0)
