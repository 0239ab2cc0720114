"""Shared set-up for the benchmarks: a ViT-B/32-architecture CLIP with random weights in hub format,
and a folder of photo-sized JPEGs. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


BENCH_WORDS = [
    "a",
    "photo",
    "of",
    "apple",
    "pie",
    "bibimbap",
    "cannoli",
    "edamame",
    "falafel",
    "french",
    "toast",
    "ice",
    "cream",
    "ramen",
    "sushi",
    "tiramisu",
    "class",
    "number",
]


def vit_b32_random(folder: Path, seed: int = 0) -> Path:
    """Default ``CLIPConfig()`` (= ViT-B/32: 224 px, patch 32, 512-d projection), random weights.

    Its tokenizer has byte symbols plus one merge chain per benchmark word, so class names take about
    as many tokens as with OpenAI's vocabulary (one or two per word)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from fewclip.world.toy import write_byte_tokenizer

    if (
        (folder / "model.safetensors").is_file()
        and (folder / ".words").is_file()
        and (folder / ".words").read_text() == " ".join(BENCH_WORDS)
    ):
        return folder
    vocab = write_byte_tokenizer(folder, BENCH_WORDS, model_max_length=77)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab,
            "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1,
            "pad_token_id": vocab - 1,
        }
    )
    CLIPModel(config).save_pretrained(str(folder))
    processor = {
        "size": {"shortest_edge": 224},
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    (folder / ".words").write_text(" ".join(BENCH_WORDS))
    return folder


def photo_folder(
    folder: Path,
    classes: int,
    per_class: int,
    size: tuple[int, int] = (512, 384),
    seed: int = 0,
    test_per_class: int | None = None,
) -> Path:
    """<folder>/<split>/class_i/NNN.jpg: smooth random colour fields with noise, saved as JPEG (q=90);
    ``per_class`` train and ``test_per_class`` (default half as many) test images per class."""
    rng = np.random.default_rng(seed)
    test_count = max(per_class // 2, 1) if test_per_class is None else test_per_class
    for split, count in (("train", per_class), ("test", test_count)):
        for c in range(classes):
            target = folder / split / f"class_{c}"
            if target.is_dir() and len(list(target.iterdir())) == count:
                continue
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                low = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
                base = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
                noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(target / f"{i:03d}.jpg", quality=90)
    return folder
