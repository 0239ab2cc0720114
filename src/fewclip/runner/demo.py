"""The embedded offline default.

``fewclip run`` with no config uses the CLIP pretrained on the procedural world (shipped in
``fewclip/world/checkpoint``, Hugging Face format, loaded through ``CLIPModel.from_pretrained`` exactly
as a hub id; ``model.id: fewclip/world-clip`` names it in any config) on world images rendered by the
``world`` source. (Seeded random models and image folders for tests: ``fewclip.world.toy``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from fewclip.backbones.model_source import WORLD_ALIAS

# The default run's classes: 16 of the 64, five of them colour-shape combinations the shipped CLIP never
# saw (fewclip.world.HELD_OUT). Chosen among random 16-class subsets, on photo renders of another seed (4242)
# than any run or test uses, for a zero-shot accuracy near 0.9 on all 16 and on each 8-class half of the
# base-to-new split: high enough to show the CLIP understands the world, low enough to leave room for
# few-shot learning (the 10 easy classes used before saturated at 0.99).
DEFAULT_WORLD_CLASSES = [
    "green diamond",
    "red ring",
    "red cross",
    "red circle",
    "blue triangle",
    "blue circle",
    "orange star",
    "red hexagon",
    "orange hexagon",
    "cyan square",
    "pink hexagon",
    "purple cross",
    "yellow circle",
    "purple square",
    "cyan cross",
    "yellow star",
]
# Short on purpose: the world CLIP has 32 text positions and its tokenizer spells words it never saw letter
# by letter ("close-up", "bright"), so some of config.DEFAULT_TEMPLATES run long on longer class names.
# These take at most 9 tokens on any world class (tested).
DEFAULT_WORLD_TEMPLATES = ["a photo of a {}.", "the {}.", "a {} on a background.", "a small {}.", "a large {}."]


# The default run trains and tests in the sketch domain (outline-only shapes on plain paper), which the
# photo-pretrained world CLIP never saw: zero-shot falls from ~0.90 on photos to ~0.30 on the 8 base and
# ~0.42 on the 8 new classes (seed 1), so adapting matters and the heads differ. Measured in
# bench/world_findings.py on both domains.
DEFAULT_WORLD_DOMAIN = "sketch"


# The default run's heads: its story in under a minute on 2 CPU cores (bench/default_run.py), not every head (name
# any other with methods=[...]; bench/world_findings.py runs them all). Zero-shot is the baseline every number is
# read against; the linear probe the classic few-shot baseline; Tip-Adapter the training-free cache; GDA the best
# head on the world's sketches (bench/world_findings.py); CoOp learns a prompt that lifts the base classes and loses
# the new ones, TCP one that keeps them: the base-to-new trade-off.
DEFAULT_METHODS = ["zero_shot", "linear_probe", "tip_adapter", "gda", "coop", "tcp"]


def embedded_config(cache_dir: Path) -> dict[str, Any]:
    """The default run: the shipped world CLIP on world sketches, ``DEFAULT_METHODS``, shots 1/4/16, seeds 1-3,
    base-to-new (train on the first eight classes, evaluate on them and on the other eight)."""
    return {
        "name": "embedded-world",
        "methods": list(DEFAULT_METHODS),
        "model": {"id": WORLD_ALIAS, "batch_size": 128},  # the shipped world CLIP, found without network
        "dataset": {
            "source": "world",
            "classes": DEFAULT_WORLD_CLASSES,
            "domain": DEFAULT_WORLD_DOMAIN,
            "train_per_class": 40,
            "test_per_class": 40,
            "image_size": 64,
            "seed": 1,
        },
        "prompts": {"templates": DEFAULT_WORLD_TEMPLATES},
        # Three budgets, not five, and every head with its paper's epochs (bench/world_findings.py runs all five)
        "few_shot": {"shots": [1, 4, 16]},
        "splits": {"seeds": [1, 2, 3], "val_per_class": 4, "subsample": "base2new"},
        # MaPLe and PromptSRC prompt 9 of ViT-B/16's 12 layers; the world CLIP has 4 (when they are added to methods)
        "maple": {"depth": 3},
        "promptsrc": {"text_depth": 3, "vision_depth": 3},
        "output": {"dir": "runs/default"},
        "cache": {"dir": str(cache_dir)},
    }
