"""World caption sets: rendered images, each with several true reference captions, in COCO format.

Every world image has a known scene (colour, shape, size, position), so its captions are true by
construction. Each image gets ``captions_per_image`` different phrasings (word order, position wording,
size placement vary); all name the same colour, shape, size and position. The set is written as
``captions.json`` (COCO: ``images`` with ``id``/``file_name``, ``annotations`` with ``image_id``/``caption``)
over ``images/`` so that it goes through the same loader as a real COCO caption file.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from fewclip.fileio import atomic_write_bytes, read_json, write_json
from fewclip.world.render import CLASSES, COLOURS, POSITIONS, SHAPES, SIZES, Scene, render

CAPTIONS_FILE = "captions.json"
IMAGE_DIR = "images"
PARAMS_FILE = "world_captions.json"

# Ways to say where the shape is; every phrase names the scene's position words (left/right/top/bottom/
# center) and no other position word, so a reader (or a test) can recover the position from it.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the top left corner", "near the top left corner", "at the top left"),
    "top": ("at the top", "near the top", "along the top edge", "at the top of the image"),
    "top right": ("in the top right", "in the top right corner", "near the top right corner", "at the top right"),
    "left": ("on the left", "at the left side", "near the left edge", "on the left of the image"),
    "center": ("in the center", "in the center of the image", "at the center", "near the center"),
    "right": ("on the right", "at the right side", "near the right edge", "on the right of the image"),
    "bottom left": (
        "in the bottom left",
        "in the bottom left corner",
        "near the bottom left corner",
        "at the bottom left",
    ),
    "bottom": ("at the bottom", "near the bottom", "along the bottom edge", "at the bottom of the image"),
    "bottom right": (
        "in the bottom right",
        "in the bottom right corner",
        "near the bottom right corner",
        "at the bottom right",
    ),
}
assert set(POSITION_PHRASES) == set(POSITIONS)

# Sentence shapes: word order and where the size goes differ; all say colour, shape, size and where.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} {where}",
    "a {colour} {shape}, {size}, {where}",
    "{where}, a {size} {colour} {shape}",
    "a {size} {shape} that is {colour}, {where}",
    "there is a {size} {colour} {shape} {where}",
    "a {colour} {shape} of {size} size {where}",
    "the {shape} {where} is {colour} and {size}",
    "a {size} {colour} {shape} sits {where}",
)


@dataclass(frozen=True)
class WorldCaptionConfig:
    """What a world caption set is made of; the same values write the same bytes."""

    n_images: int = 460
    captions_per_image: int = 5
    image_size: int = 64
    seed: int = 0
    domain: str = "photo"


def describe(scene: Scene, rng: np.random.Generator, count: int) -> list[str]:
    """``count`` different true captions of ``scene`` (different templates, random position phrasing)."""
    if not 1 <= count <= len(CAPTION_TEMPLATES):
        raise ValueError(f"captions_per_image must be between 1 and {len(CAPTION_TEMPLATES)}, got {count}")
    templates = rng.choice(len(CAPTION_TEMPLATES), size=count, replace=False)
    phrases = POSITION_PHRASES[scene.position]
    return [
        CAPTION_TEMPLATES[t].format(
            size=scene.size, colour=scene.colour, shape=scene.shape, where=phrases[rng.integers(len(phrases))]
        )
        for t in templates
    ]


def caption_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of caption-set image ``index``: a pure function of (seed, index)."""
    return np.random.default_rng([seed, 0xCA97, index])  # 0xCA97: apart from the classification world's streams


def world_caption_item(cfg: WorldCaptionConfig, index: int) -> tuple[np.ndarray, Scene, list[str]]:
    """Image ``index`` of the set: (pixels (H, W, 3) uint8, its scene, its reference captions)."""
    rng = caption_rng(cfg.seed, index)
    class_name = CLASSES[int(rng.integers(len(CLASSES)))]
    image, scene = render(class_name, rng, cfg.image_size, cfg.domain)
    return np.asarray(image), scene, describe(scene, rng, cfg.captions_per_image)


def all_captions() -> list[str]:
    """Every caption the templates can produce (the decoder's language; each phrase of each position)."""
    wheres = [w for phrases in POSITION_PHRASES.values() for w in phrases]
    return fill_all(CAPTION_TEMPLATES, colour=COLOURS, shape=SHAPES, size=SIZES, where=wheres)


def fill_all(templates: Sequence[str], **choices: Iterable[str]) -> list[str]:
    """Every template filled with every combination of ``choices`` (nested in the keywords' order, the last
    innermost)."""
    return [
        t.format(**dict(zip(choices, values))) for t in templates for values in itertools.product(*choices.values())
    ]


def caption_words() -> list[str]:
    """The world caption vocabulary (words and the comma), sorted."""
    words = {w for text in all_captions() for w in text.replace(",", " ,").split()}
    return sorted(words)


def params_digest(cfg: WorldCaptionConfig) -> str:
    """Changes whenever the set would differ: its parameters and the templates and phrases."""
    text = json.dumps(
        {"config": asdict(cfg), "templates": CAPTION_TEMPLATES, "phrases": POSITION_PHRASES}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_world_captions(folder: Path, cfg: WorldCaptionConfig) -> Path:
    """Render the set into ``folder`` (``captions.json`` + ``images/``) unless the same set is there already;
    returns the captions file. ``captions.json`` is written last, so a killed run leaves no half set."""
    captions_file = folder / CAPTIONS_FILE
    params_file = folder / PARAMS_FILE
    digest = params_digest(cfg)
    if captions_file.is_file() and params_file.is_file() and read_json(params_file).get("digest") == digest:
        return captions_file
    captions_file.unlink(missing_ok=True)  # an older set's file must not outlive a regeneration killed midway
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(cfg.n_images):
        pixels, scene, captions = world_caption_item(cfg, index)
        file_name = f"{index:05d}.png"
        target = folder / IMAGE_DIR / file_name
        atomic_write_bytes(target, png_bytes(Image.fromarray(pixels)))
        images.append({"id": index, "file_name": file_name, "scene": asdict(scene)})
        annotations += [
            {"id": len(annotations) + k, "image_id": index, "caption": text} for k, text in enumerate(captions)
        ]
    write_json(params_file, {"digest": digest, "config": asdict(cfg)})
    write_json(
        captions_file,
        {
            "info": {"description": "fewclip world captions", "config": asdict(cfg)},
            "images": images,
            "annotations": annotations,
        },
    )
    return captions_file


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
