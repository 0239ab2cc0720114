"""Saliency of clip_lora runs through its tuned image tower: with LoRA B at zero it is the frozen model's map
for zero-shot with the same template, and changing B changes the map. On the world CLIP: the tiny random CLIP's
maps are sums of ~1e-7 terms that cancel, so float reduction order alone moves its normalised maps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fewclip.backbones import load_backbone
from fewclip.backbones.config import ModelConfig
from fewclip.heads import Task
from fewclip.heads.encoders.clip_lora import ClipLoraConfig, ClipLoraHead
from fewclip.heads.subset import ClassSubset
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.saliency import patch_saliency
from fewclip.world import CHECKPOINT
from fewclip.world.render import image_rng, render
from tests.heads.image_tasks import assert_same_map_terms

TEMPLATE = "a photo of a {}."
NAMES = ["red cross", "blue circle", "green diamond", "orange star"]


@pytest.fixture(scope="module")
def backbone() -> Any:
    return load_backbone(ModelConfig(id=str(CHECKPOINT), device="cpu"))


@pytest.fixture(scope="module")
def setting(backbone: Any) -> tuple[list[str], torch.Tensor]:
    images = [
        render(name, image_rng(5, "sketch", "test", name, index), 64, "sketch")[0]
        for name in NAMES
        for index in range(2)
    ]
    return NAMES, torch.from_numpy(np.stack([backbone.transform(image) for image in images]))


def untrained_head(backbone: Any, names: list[str]) -> ClipLoraHead:
    """A clip_lora head as fit builds it before any step: LoRA A drawn, B zero."""
    head = ClipLoraHead(ClipLoraConfig())
    head.template_ = TEMPLATE
    head._build(backbone, seed=0)
    head.prompts_ = [TEMPLATE.format(name) for name in names]
    head.logit_scale_ = torch.tensor(backbone.logit_scale)
    head.model_.eval()
    return head


def lora_b(head: ClipLoraHead) -> list[torch.nn.Parameter]:
    return [p for n, p in head.model_.named_parameters() if "lora_B" in n]


def test_with_b_zero_the_map_is_the_frozen_zero_shot_map(backbone: Any, setting: tuple) -> None:
    names, pixels = setting
    head = untrained_head(backbone, names)
    assert lora_b(head) and all(torch.count_nonzero(p) == 0 for p in lora_b(head))
    zero_shot = ZeroShotHead().fit(Task(names, [TEMPLATE], backbone))
    maps, logits = patch_saliency(backbone, head, pixels)
    frozen_maps, frozen_logits = patch_saliency(backbone, zero_shot, pixels)
    assert maps.shape == frozen_maps.shape == (len(pixels), 8, 8)  # world CLIP: 64 px, 8 px patches
    assert maps.max() == 1.0
    assert_same_map_terms(backbone, head, zero_shot, pixels)
    torch.testing.assert_close(logits, frozen_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, head.image_logits(pixels), atol=1e-5, rtol=0)
    assert all(p.grad is None for p in head.model_.parameters())  # a map leaves no gradient in the adapters


def test_changing_lora_b_changes_the_map(backbone: Any, setting: tuple) -> None:
    names, pixels = setting
    head = untrained_head(backbone, names)
    target = head.image_logits(pixels).argmax(-1)  # the same classes before and after: only B differs
    before, _ = patch_saliency(backbone, head, pixels, target)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in lora_b(head):
            param.copy_(torch.randn(param.shape, generator=generator) * 2.0)
    after, logits = patch_saliency(backbone, head, pixels, target)
    torch.testing.assert_close(logits, head.image_logits(pixels), atol=1e-5, rtol=0)  # the tuned towers' logits
    assert np.abs(after - before).max() > 0.2, np.abs(after - before).max()
    # only the vision tower's B moves the map: the text tower's changes the class texts, constants here
    vision_only = untrained_head(backbone, names)
    with torch.no_grad():
        for name, param in vision_only.model_.named_parameters():
            if "lora_B" in name and "vision_model" in name:
                param.copy_(dict(head.model_.named_parameters())[name])
    vision_maps, _ = patch_saliency(backbone, vision_only, pixels, target)
    assert np.abs(vision_maps - before).max() > 0.2


def test_a_class_subset_of_a_tuned_head_keeps_its_columns(backbone: Any, setting: tuple) -> None:
    names, pixels = setting
    head = untrained_head(backbone, names)
    subset = ClassSubset(head, [2, 0])
    assert subset.tunes_encoders
    torch.testing.assert_close(subset.image_logits(pixels), head.image_logits(pixels)[:, [2, 0]])
    logits, activations = subset.image_saliency_pass(pixels)
    assert logits.shape == (len(pixels), 2) and activations.shape[:3] == (len(pixels), 8, 8)
