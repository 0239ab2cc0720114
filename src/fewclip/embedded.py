"""The embedded offline default: a tiny CLIP in Hugging Face format and a synthetic shapes dataset,
both generated on first use into the cache, so ``fewclip run`` works with no network.

The model is saved with ``save_pretrained`` and loaded back through ``CLIPModel.from_pretrained`` and
``AutoTokenizer.from_pretrained``, exactly the path a hub id takes. Its weights are random (seeded):
zero-shot is at chance until the world-pretrained checkpoint replaces it; image features still carry
colour and layout, so the linear probe learns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
DEFAULT_CLASSES = [f"{colour}_{shape}" for colour in ("red", "green", "blue") for shape in SHAPES][:6]


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable-character table (the base of its BPE vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def write_byte_tokenizer(folder: Path, merge_words: Iterable[str] = (), model_max_length: int = 32) -> int:
    """A CLIP-format BPE tokenizer (vocab.json + merges.txt + tokenizer.json) with byte symbols and a
    few merges for ``merge_words``; returns the vocabulary size. Other words split into characters."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in sorted(set(merge_words)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if f"{pieces[0]} {pieces[1]}" not in merges:
                merges.append(f"{pieces[0]} {pieces[1]}")
                if merged not in vocab:
                    vocab.append(merged)
            pieces = [merged] + pieces[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("".join(line + "\n" for line in ["#version: 0.2", *merges]), encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=model_max_length)
    tokenizer.save_pretrained(str(folder))  # writes tokenizer.json + tokenizer_config.json only
    return len(vocab)


def build_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 64,
                    layers: int = 2, heads: int = 2, projection_dim: int = 32, max_positions: int = 32,
                    merge_words: Iterable[str] = ("a", "photo", "of", "the")) -> Path:
    """Save a randomly initialised (seeded) CLIPModel with tokenizer and preprocessor in hub format."""
    import torch
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
    processor = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
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


def _ensure(folder: Path, build: Any) -> Path:
    """Build into a temporary sibling and rename, so an interrupted build is never used."""
    if (folder / ".complete").is_file():
        return folder
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    build(tmp)
    (tmp / ".complete").write_text("ok\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def embedded_config(cache_dir: Path) -> dict[str, Any]:
    """The default run's config as a dict: tiny CLIP + shapes, every registered head, seeds 1-3."""
    from .heads import list_heads

    root = Path(cache_dir) / "embedded"
    words = ["a", "photo", "of", "the"] + [w for name in DEFAULT_CLASSES for w in name.split("_")]
    model = _ensure(root / "tiny-clip-v1", lambda p: build_tiny_clip(p, merge_words=words))
    data = _ensure(root / "shapes-v1", build_shapes_dataset)
    return {
        "name": "embedded-default",
        "methods": list_heads(),
        "model": {"id": str(model), "batch_size": 64},
        "dataset": {"source": "folder", "path": str(data)},
        "few_shot": {"shots": [1, 2, 4, 8, 16]},
        "splits": {"seeds": [1, 2, 3], "val_per_class": 4},
        "output": {"dir": "runs/default"},
        "cache": {"dir": str(cache_dir)},
    }
