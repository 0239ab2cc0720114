"""Shared set-up for the benchmarks: CLIPs with random weights in hub format (ViT-B/32's and ViT-B/16's
architectures, or any ``CLIPConfig``), a folder of photo-sized JPEGs, and a peak-RSS sampler. Nothing is
downloaded."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# Ten Food-101 class names, every word of them in BENCH_WORDS (the random CLIPs' vocabulary)
FOOD_CLASSES = [
    "apple pie",
    "bibimbap",
    "cannoli",
    "edamame",
    "falafel",
    "french toast",
    "ice cream",
    "ramen",
    "sushi",
    "tiramisu",
]


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


def random_clip(
    folder: Path, make_config: Callable[[int], Any], words: Sequence[str] = BENCH_WORDS, seed: int = 0
) -> Path:
    """A CLIP with random weights (seeded) in hub format: ``make_config(tokens)`` gives its ``CLIPConfig`` for a
    tokenizer of ``tokens`` ids (byte symbols plus one merge chain per word of ``words``, so each word is one
    token; its last two ids are BOS and EOS), and the preprocessor is OpenAI CLIP's at the config's image size.
    A folder that already holds a model built for the same words is reused."""
    from transformers import CLIPModel

    from fewclip.world.toy import write_byte_tokenizer

    stamp = folder / ".words"
    if (folder / "model.safetensors").is_file() and stamp.is_file() and stamp.read_text() == " ".join(words):
        return folder
    tokens = write_byte_tokenizer(folder, words, model_max_length=77)
    torch.manual_seed(seed)
    config = make_config(tokens)
    CLIPModel(config).save_pretrained(str(folder))
    size = config.vision_config.image_size
    processor = {
        "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size},
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    stamp.write_text(" ".join(words))
    return folder


def vit_b32_random(folder: Path, seed: int = 0) -> Path:
    """Default ``CLIPConfig()`` (= ViT-B/32: 224 px, patch 32, 512-d projection), random weights.

    Its tokenizer has byte symbols plus one merge chain per benchmark word, so class names take about
    as many tokens as with OpenAI's vocabulary (one or two per word)."""
    from transformers import CLIPConfig

    def config(tokens: int) -> Any:
        ids = {"vocab_size": tokens, "bos_token_id": tokens - 2, "eos_token_id": tokens - 1, "pad_token_id": tokens - 1}
        return CLIPConfig(text_config=ids)

    return random_clip(folder, config, BENCH_WORDS, seed)


def vit_b16_config(layers: int = 12, tokens: int = 49408) -> Any:
    """``CLIPConfig`` with ViT-B/16's dimensions (vision 768 wide, 12 heads, MLP 3072, patch 16, 224 px; text 512
    wide, 8 heads, MLP 2048, 77 positions, vocab 49408; projection 512), ``layers`` per tower (12 is ViT-B/16's).
    ``tokens``: the tokenizer's size (its last two ids are BOS and EOS; the embedding stays 49408 rows)."""
    from transformers import CLIPConfig

    text = {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        "bos_token_id": tokens - 2,
        "eos_token_id": tokens - 1,
        "pad_token_id": tokens - 1,
    }
    vision = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": layers,
        "num_attention_heads": 12,
        "patch_size": 16,
        "image_size": 224,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


def vit_b16_random(folder: Path, layers: int = 12, seed: int = 0, words: Sequence[str] = BENCH_WORDS) -> Path:
    """``vit_b16_config`` with random weights, in hub format, with a byte tokenizer that has ``words``."""
    return random_clip(folder, lambda tokens: vit_b16_config(layers, tokens), words, seed)


def decode_seconds(images: Any, transform: Any, batch: int, epochs: int = 3) -> float:
    """The fastest of ``epochs`` loads of one augmented batch of ``images`` (an ``ImageSet``) as the images loop
    loads it in process (``image_batches.epoch_batches``, no workers): the decoding and augmentation part of a
    step. The first load also warms the file cache."""
    from fewclip.training.image_batches import epoch_batches

    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        next(epoch_batches(images, transform, 1, epoch, batch, 0))
        times.append(time.perf_counter() - start)
    return min(times[1:] or times)


class PeakRss:
    """Samples this process's resident set size every 5 ms while active; ``peak_mb`` is the largest seen."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak_mb, self.done = self.now_mb(), False
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def now_mb(self) -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page / 2**20

    def sample(self) -> None:
        while not self.done:
            self.peak_mb = max(self.peak_mb, self.now_mb())
            time.sleep(0.005)

    def __enter__(self) -> "PeakRss":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done = True
        self.thread.join()


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
