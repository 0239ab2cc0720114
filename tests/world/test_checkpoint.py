"""The shipped world CLIP: loads offline like a hub model and understands the world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewclip.backbones import ModelConfig, load_backbone
from fewclip.runner.demo import DEFAULT_WORLD_CLASSES, DEFAULT_WORLD_TEMPLATES
from fewclip.heads import Task, ZeroShotHead
from fewclip.world import CHECKPOINT, HELD_OUT
from fewclip.world.render import image_rng, render


def test_shipped_checkpoint_is_small_and_complete() -> None:
    names = {p.name for p in CHECKPOINT.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "preprocessor_config.json",
        "README.md",
    } <= names
    total = sum(p.stat().st_size for p in CHECKPOINT.iterdir() if p.is_file())
    assert total <= 5 * 2**20, f"{total / 2**20:.1f} MiB"
    card = (CHECKPOINT / "README.md").read_text()
    assert "fewclip world pretrain" in card and all(name in card for name in HELD_OUT)


@pytest.mark.slow
def test_shipped_checkpoint_zero_shot_on_fresh_images_of_the_default_classes() -> None:
    backbone = load_backbone(ModelConfig(id=str(CHECKPOINT)))
    assert sum(name in HELD_OUT for name in DEFAULT_WORLD_CLASSES) >= 3
    images, labels = [], []
    for label, name in enumerate(DEFAULT_WORLD_CLASSES):
        for index in range(30):  # seed 12345: renders no run, pretraining or class-set choice used
            image, _ = render(name, image_rng(12345, "photo", "test", name, index), 64, "photo")
            images.append(backbone.transform(image))
            labels.append(label)
    features = backbone.encode_images(torch.from_numpy(np.stack(images)))
    head = ZeroShotHead().fit(Task(DEFAULT_WORLD_CLASSES, DEFAULT_WORLD_TEMPLATES, backbone))
    accuracy = float((head.predict(features) == torch.tensor(labels)).float().mean())
    print(f"zero-shot accuracy on the default classes: {accuracy:.3f}")
    assert accuracy >= 0.9
