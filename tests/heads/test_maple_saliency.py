"""Saliency of maple runs through its prompted image tower: with no vision prompts (coupling off) and the context
initialised from "a photo of a", it is the frozen model's map for zero-shot with that template; vision prompts
(coupling on, deep) change the map. On the world CLIP, like tests/heads/test_clip_lora_saliency.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fewclip.backbones import load_backbone
from fewclip.backbones.config import ModelConfig
from fewclip.heads import Task
from fewclip.heads.encoders.maple import MapleConfig, MapleHead
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.saliency import patch_saliency
from fewclip.world import CHECKPOINT
from fewclip.world.render import image_rng, render
from tests.heads.image_tasks import assert_same_map_terms

NAMES = ["red cross", "blue circle", "green diamond", "orange star"]


@pytest.fixture(scope="module")
def backbone() -> Any:
    return load_backbone(ModelConfig(id=str(CHECKPOINT), device="cpu"))


@pytest.fixture(scope="module")
def pixels(backbone: Any) -> torch.Tensor:
    images = [
        render(name, image_rng(5, "sketch", "test", name, index), 64, "sketch")[0]
        for name in NAMES
        for index in range(2)
    ]
    return torch.from_numpy(np.stack([backbone.transform(image) for image in images]))


def untrained(backbone: Any, **changes: Any) -> MapleHead:
    """A maple head as fit builds it before any step."""
    head = MapleHead(MapleConfig(**changes))
    head._build(backbone, NAMES, seed=0)
    head.logit_scale_ = torch.tensor(head.net_.logit_scale)
    head._finish()
    return head


def test_without_vision_prompts_the_map_is_the_frozen_zero_shot_map(backbone: Any, pixels: torch.Tensor) -> None:
    head = untrained(backbone, depth=1, coupling=False, n_ctx=4)
    zero_shot = ZeroShotHead().fit(Task(NAMES, ["a photo of a {}."], backbone))
    maps, logits = patch_saliency(backbone, head, pixels)
    frozen_maps, frozen_logits = patch_saliency(backbone, zero_shot, pixels)
    assert maps.shape == frozen_maps.shape == (len(pixels), 8, 8) and maps.max() == 1.0
    assert_same_map_terms(backbone, head, zero_shot, pixels)
    torch.testing.assert_close(logits, frozen_logits, atol=1e-5, rtol=0)
    assert all(p.grad is None for p in head.net_.parameters())  # a map leaves no gradient in the prompts


def test_vision_prompts_change_the_map(backbone: Any, pixels: torch.Tensor) -> None:
    head = untrained(backbone, depth=3, coupling=True, n_ctx=2)
    text = head.class_text_features_.clone()
    target = head.image_logits(pixels).argmax(-1)
    before, _ = patch_saliency(backbone, head, pixels, target)
    with torch.no_grad():  # only the text -> vision projections: the class texts stay as they are
        for param in [*head.net_.prompts.proj.parameters(), *head.net_.prompts.deep_proj.parameters()]:
            param.mul_(20.0)
    head._finish()
    assert torch.equal(head.class_text_features_, text)
    after, logits = patch_saliency(backbone, head, pixels, target)
    torch.testing.assert_close(logits, head.image_logits(pixels), atol=1e-5, rtol=0)
    assert np.abs(after - before).max() > 0.2, np.abs(after - before).max()
