"""World caption sets: every reference is true to the rendered scene, varied, deterministic, COCO-shaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fewclip.caption.data import load_coco
from fewclip.world.captions import (
    CAPTIONS_FILE,
    IMAGE_DIR,
    WorldCaptionConfig,
    world_caption_item,
    write_world_captions,
)
from fewclip.world.render import COLOURS, SHAPES, SIZES

SIDES = ("left", "right", "top", "bottom")


def _position_words(position: str) -> set[str]:
    words = set(position.split()) & set(SIDES)
    return words or {"center"}


def test_every_caption_names_the_true_colour_shape_size_and_position() -> None:
    cfg = WorldCaptionConfig(seed=5)
    for index in range(60):
        _, scene, captions = world_caption_item(cfg, index)
        assert len(captions) == 5 and len(set(captions)) == 5
        for caption in captions:
            words = caption.replace(",", " ").split()
            assert [w for w in words if w in COLOURS] == [scene.colour], caption
            assert [w for w in words if w in SHAPES] == [scene.shape], caption
            assert [w for w in words if w in SIZES] == [scene.size], caption
            assert set(words) & {*SIDES, "center"} == _position_words(scene.position), (caption, scene)


def test_captions_vary_in_word_order_across_the_set() -> None:
    cfg = WorldCaptionConfig(seed=0)
    captions = [c for i in range(30) for c in world_caption_item(cfg, i)[2]]
    first_words = {c.split()[0] for c in captions}
    assert len(first_words) >= 5, first_words
    # size after the shape in some captions, before it in others
    orders = set()
    for i in range(30):
        _, scene, texts = world_caption_item(cfg, i)
        for text in texts:
            orders.add(text.index(scene.size) < text.index(scene.shape))
    assert orders == {True, False}


def test_written_set_is_coco_deterministic_and_loads(tmp_path: Path) -> None:
    cfg = WorldCaptionConfig(n_images=12, captions_per_image=4, image_size=32, seed=2)
    first = write_world_captions(tmp_path / "a", cfg)
    second = write_world_captions(tmp_path / "b", cfg)
    assert first.name == CAPTIONS_FILE and first.read_bytes() == second.read_bytes()
    for name in sorted(p.name for p in (tmp_path / "a" / IMAGE_DIR).iterdir()):
        assert (tmp_path / "a" / IMAGE_DIR / name).read_bytes() == (tmp_path / "b" / IMAGE_DIR / name).read_bytes()
    data = json.loads(first.read_text())
    assert len(data["images"]) == 12 and len(data["annotations"]) == 48
    loaded = load_coco(first, tmp_path / "a" / IMAGE_DIR)
    pixels, scene, captions = world_caption_item(cfg, 7)
    item = next(i for i in loaded.items if i.image_id == "7")
    assert item.captions == tuple(captions)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(item.path).convert("RGB")), pixels)
    assert data["images"][7]["scene"]["colour"] == scene.colour
