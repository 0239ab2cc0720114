"""Tiny seeded models and toy image folders for tests and benchmarks: a randomly initialised CLIP in hub format
(``build_tiny_clip``) and folders of coloured shapes (``build_shapes_dataset``). The default run does not use them:
it uses the CLIP pretrained on the world (``fewclip.runner.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw

from fewclip.backbones.preprocess import write_processor_config
from fewclip.world.tokenizer import chain_merges, write_clip_tokenizer

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
DEFAULT_CLASSES = [f"{colour}_{shape}" for colour in ("red", "green", "blue") for shape in SHAPES][:6]


def write_byte_tokenizer(folder: Path, merge_words: Iterable[str] = (), model_max_length: int = 32) -> int:
    """A CLIP-format BPE tokenizer with byte symbols and one merge chain per word in ``merge_words``;
    returns the vocabulary size. Other words split into characters."""
    return write_clip_tokenizer(folder, chain_merges(merge_words), model_max_length)


def build_tiny_clip(
    folder: Path,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 32,
    max_positions: int = 32,
    merge_words: Iterable[str] = ("a", "photo", "of", "the"),
) -> Path:
    """Save a randomly initialised (seeded) CLIPModel with tokenizer and preprocessor in hub format."""
    # transformers' model classes are imported when a tiny CLIP is built (tests, the world's pretraining):
    # importing them takes seconds, which every command would pay at start, as this module serves the default run
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    vocab_size = write_byte_tokenizer(folder, merge_words, max_positions)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = dict(
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
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


def build_shapes_dataset(
    folder: Path,
    classes: list[str] = DEFAULT_CLASSES,
    train_per_class: int = 40,
    test_per_class: int = 20,
    seed: int = 0,
    size: int = 48,
) -> Path:
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
