"""The embedded offline captioning default: the shipped world CLIP and world decoder on a world caption set.

``fewclip caption run`` with no config uses it. Every world image has several true captions (colour,
shape, size, position in different words), the decoder already speaks the world's language, so what
the methods must learn is to read the image: the untrained decoder says one plausible caption for
every image, a tuned one names what is there. Sized to take a few minutes on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = "runs/caption-default"


def embedded_caption_config(cache_dir: Path) -> dict[str, Any]:
    """The default caption run: adapter, prefix and LoRA, one seed, 480 world images with 5 captions each."""
    from fewclip.backbones.model_source import WORLD_ALIAS, WORLD_DECODER_ALIAS

    return {
        "name": "embedded-world-captions",
        "methods": ["adapter", "prefix", "lora"],
        "seeds": [0],
        "model": {"encoder": WORLD_ALIAS, "decoder": WORLD_DECODER_ALIAS},
        "data": {"source": "world", "world_images": 480, "world_captions_per_image": 5, "seed": 0},
        # the reference recipe's schedule, with the rate a 2-layer, 128-wide decoder needs (1e-4 is for GPT-2)
        "training": {"epochs": 10, "batch_size": 32, "lr": 3e-3, "lr_step_epochs": 3, "lr_gamma": 0.5},
        "decode": {"beam_size": 1, "max_length": 20},
        "attention": {"fixed_images": 3},
        "output": {"dir": DEFAULT_OUTPUT},
        "cache": {"dir": str(cache_dir)},
    }
