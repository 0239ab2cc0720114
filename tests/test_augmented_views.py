"""Augmented views: deterministic random resized crops + flips, encoded once, used by prompt learning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.backbones import ImageTransform
from fewclip.backbones.preprocess import augment_rng, augment_view, random_resized_crop_box
from fewclip.data import load_split
from fewclip.features import FeatureCache, load_views
from fewclip.heads import FeatureSet
from fewclip.training.features_loop import FeatureTrainSettings, train_on_features
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, features, prepare, train


def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))


def test_a_view_is_a_deterministic_function_of_seed_image_and_index() -> None:
    transform = ImageTransform(resize=32, crop=(32, 32))
    image = _photo()
    first = augment_view(transform, augment_rng(0, "ab" * 20, 0), image)
    again = augment_view(transform, augment_rng(0, "ab" * 20, 0), image)
    other_view = augment_view(transform, augment_rng(0, "ab" * 20, 1), image)
    other_seed = augment_view(transform, augment_rng(1, "ab" * 20, 0), image)
    assert first.shape == (3, 32, 32) and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_view) and not np.array_equal(first, other_seed)


def test_crop_boxes_stay_inside_the_image_and_cover_the_scale_range() -> None:
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(60, 40, rng)
        assert 0 <= left and 0 <= top and left + w <= 60 and top + h <= 40 and w > 0 and h > 0
        areas.append(w * h / (60 * 40))
    assert min(areas) < 0.2 and max(areas) > 0.8


def test_views_replace_the_features_each_epoch() -> None:
    """Views equal to the features give the plain run exactly; different views change the result."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 8, generator=generator), torch.arange(12) % 3
    settings = FeatureTrainSettings(
        epochs=3, batch_size=4, lr=0.1, momentum=0.9, weight_decay=0.0, warmup_epochs=0, warmup_lr=1e-5
    )

    def run(views: torch.Tensor | None) -> torch.Tensor:
        module = torch.nn.Linear(8, 3)
        torch.nn.init.zeros_(module.weight), torch.nn.init.zeros_(module.bias)
        train_on_features(module, module, FeatureSet(x, y, views), None, 3, settings, seed=1)
        return module.weight.detach().clone()

    plain = run(None)
    assert torch.equal(run(x[:, None].expand(-1, 4, -1).clone()), plain)
    assert not torch.equal(run(x[:, None] + torch.randn(12, 4, 8, generator=generator)), plain)


def test_pipeline_encodes_views_of_support_images_once(
    make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("methods=[coop]", "coop.augment_views=3", "coop.epochs=2")
    ctx = RunContext(config)
    prepare(ctx)
    features(ctx)
    support = {
        r.sha1
        for seed in config.splits.seeds
        for k in config.few_shot.shots
        for r in load_split(ctx.layout, seed, k)[0]
    }
    view_cache = FeatureCache(ctx.cache_root, json.loads((ctx.view_cache.dir / "fingerprint.json").read_text()))
    assert len(view_cache) == 3 * len(support)
    assert view_cache.key != ctx.cache.key

    calls: list[int] = []
    original = type(ctx.backbone).encode_images
    monkeypatch.setattr(type(ctx.backbone), "encode_images", lambda self, px: calls.append(1) or original(self, px))
    again = RunContext(config)
    features(again)
    assert calls == []  # a second features stage finds every view cached
    train(again)
    records = load_split(ctx.layout, 1, 1)[0]
    views = load_views(view_cache, records, 3)
    assert views.shape == (len(records), 3, ctx.cache.dim)
    assert not torch.equal(views[:, 0], views[:, 1])
    assert (RunLayout(Path(config.output.dir)).heads / "coop" / "shot_1-seed_1.json").is_file()
