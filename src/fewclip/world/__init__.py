"""The embedded world: a procedural benchmark of coloured shapes, its caption tokenizer, and
contrastive pretraining of a tiny CLIP on it (the shipped checkpoint lives in ``checkpoint/``); caption
sets and a tiny GPT-2 pretrained on world captions (shipped in ``decoder/``) for captioning."""

from pathlib import Path

from fewclip.world.render import CLASSES, COLOURS, DOMAINS, SHAPES, parse_class, render

CHECKPOINT = Path(__file__).parent / "checkpoint"
DECODER = Path(__file__).parent / "decoder"

# Colour-shape combinations never shown in pretraining: every colour and every shape is seen in other
# combinations, so zero-shot on these tests composition.
HELD_OUT = [f"{colour} {SHAPES[(i * 3 + 1) % 8]}" for i, colour in enumerate(COLOURS)] + [
    f"{colour} {SHAPES[(i * 3 + 5) % 8]}" for i, colour in enumerate(list(COLOURS)[:4])
]
SEEN = [name for name in CLASSES if name not in HELD_OUT]

__all__ = [
    "CHECKPOINT",
    "CLASSES",
    "DECODER",
    "COLOURS",
    "DOMAINS",
    "HELD_OUT",
    "SEEN",
    "SHAPES",
    "parse_class",
    "render",
]
