"""The embedded offline default and tiny models for tests.

``fewclip run`` with no config uses the CLIP pretrained on the procedural world (shipped in
``fewclip/world/checkpoint``, Hugging Face format, loaded through ``CLIPModel.from_pretrained`` exactly
as a hub id; ``model.id: fewclip/world-clip`` names it in any config) on world images rendered by the
``world`` source. ``build_tiny_clip`` and ``build_shapes_dataset`` make seeded random models and image
folders for tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw

from fewclip.backbones.model_source import WORLD_ALIAS
from fewclip.backbones.preprocess import write_processor_config
from fewclip.heads import HEADS, list_heads
from fewclip.world.tokenizer import chain_merges, write_clip_tokenizer

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
DEFAULT_CLASSES = [f"{colour}_{shape}" for colour in ("red", "green", "blue") for shape in SHAPES][:6]


def write_byte_tokenizer(folder: Path, merge_words: Iterable[str] = (), model_max_length: int = 32) -> int:
    """A CLIP-format BPE tokenizer with byte symbols and one merge chain per word in ``merge_words``;
    returns the vocabulary size. Other words split into characters."""
    return write_clip_tokenizer(folder, chain_merges(merge_words), model_max_length)


def build_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 64,
                    layers: int = 2, heads: int = 2, projection_dim: int = 32, max_positions: int = 32,
                    merge_words: Iterable[str] = ("a", "photo", "of", "the")) -> Path:
    """Save a randomly initialised (seeded) CLIPModel with tokenizer and preprocessor in hub format."""
    # transformers' model classes are imported when a tiny CLIP is built (tests, the world's pretraining):
    # importing them takes seconds, which every command would pay at start, as this module serves the default run
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    vocab_size = write_byte_tokenizer(folder, merge_words, max_positions)
    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=width * 4, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=max_positions,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=width, intermediate_size=width * 4, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(str(folder))
    write_processor_config(folder, image_size)
    return folder


def draw_shape(class_name: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """One image of '<colour>_<shape>' at a random place and scale on a noisy background."""
    colour_name, shape = class_name.split("_", 1)
    background = rng.integers(90, 170, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[colour_name])
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def build_shapes_dataset(folder: Path, classes: list[str] = DEFAULT_CLASSES, train_per_class: int = 40,
                         test_per_class: int = 20, seed: int = 0, size: int = 48) -> Path:
    """Write <folder>/{train,test}/<class>/NNNN.png, deterministic from the seed."""
    folder = Path(folder)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_index, name in enumerate(classes):
            target = folder / split / name
            target.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, class_index, split == "test"])
            for i in range(count):
                draw_shape(name, rng, size).save(target / f"{i:04d}.png")
    return folder


# The default run's classes: 16 of the 64, five of them colour-shape combinations the shipped CLIP never
# saw (fewclip.world.HELD_OUT). Chosen among random 16-class subsets, on photo renders of another seed (4242)
# than any run or test uses, for a zero-shot accuracy near 0.9 on all 16 and on each 8-class half of the
# base-to-new split: high enough to show the CLIP understands the world, low enough to leave room for
# few-shot learning (the 10 easy classes used before saturated at 0.99).
DEFAULT_WORLD_CLASSES = ["green diamond", "red ring", "red cross", "red circle", "blue triangle", "blue circle",
                         "orange star", "red hexagon", "orange hexagon", "cyan square", "pink hexagon",
                         "purple cross", "yellow circle", "purple square", "cyan cross", "yellow star"]
# Short on purpose: the world CLIP has 32 text positions and its tokenizer spells words it never saw letter
# by letter ("close-up", "bright"), so some of config.DEFAULT_TEMPLATES run long on longer class names.
# These take at most 9 tokens on any world class (tested).
DEFAULT_WORLD_TEMPLATES = ["a photo of a {}.", "the {}.", "a {} on a background.", "a small {}.", "a large {}."]


# The default run trains and tests in the sketch domain (outline-only shapes on plain paper), which the
# photo-pretrained world CLIP never saw: zero-shot falls from ~0.90 on photos to ~0.30 on the 8 base and
# ~0.42 on the 8 new classes (seed 1), so adapting matters and the heads differ. Measured in
# bench/world_findings.py on both domains.
DEFAULT_WORLD_DOMAIN = "sketch"


def embedded_config(cache_dir: Path) -> dict[str, Any]:
    """The default run: the shipped world CLIP on world sketches, every registered head that trains on cached
    features (the encoder-tuning ones, e.g. clip_lora, run only when named), shots 1/4/16, seeds 1-3,
    base-to-new (train on the first eight classes, evaluate on them and on the other eight)."""
    return {
        "name": "embedded-world",
        "methods": [m for m in list_heads() if not HEADS.get(m).tunes_encoders],
        "model": {"id": WORLD_ALIAS, "batch_size": 128},  # the shipped world CLIP, found without network
        "dataset": {"source": "world", "classes": DEFAULT_WORLD_CLASSES, "domain": DEFAULT_WORLD_DOMAIN,
                    "train_per_class": 40, "test_per_class": 40, "image_size": 64, "seed": 1},
        "prompts": {"templates": DEFAULT_WORLD_TEMPLATES},
        # Three budgets, not five, and every head with its paper's epochs: 11 heads x 3 seeds fit in 3 minutes
        # on 2 CPU cores (five budgets would not; bench/world_findings.py runs all five).
        "few_shot": {"shots": [1, 4, 16]},
        "splits": {"seeds": [1, 2, 3], "val_per_class": 4, "subsample": "base2new"},
        # MaPLe prompts 9 of ViT-B/16's 12 layers; the world CLIP has 4 (when maple is added to methods)
        "maple": {"depth": 3},
        "output": {"dir": "runs/default"},
        "cache": {"dir": str(cache_dir)},
    }
