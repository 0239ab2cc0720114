"""Caption fixtures: a tiny GPT-2 decoder with its tokenizer and a toy task (colour of a square)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewclip.caption.model import CaptionModelConfig
from fewclip.caption.tiny import build_tiny_decoder, toy_caption_images


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-gpt2") / "model", seed=0)


@pytest.fixture(scope="session")
def toy_pairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """24 (image, caption) pairs, 6 per colour."""
    return toy_caption_images(tmp_path_factory.mktemp("toy-captions"), per_colour=6, seed=0)


@pytest.fixture()
def caption_config(tiny_clip: Path, tiny_decoder: Path):
    """A CaptionModelConfig from the real defaults with the tiny models and the given overrides."""

    def build(**overrides) -> CaptionModelConfig:
        return CaptionModelConfig(
            encoder=str(tiny_clip), decoder=str(tiny_decoder), device="cpu", prefix_length=4, **overrides
        )

    return build


@pytest.fixture()
def world_caption_config(tmp_path: Path):
    """A small caption config from the real defaults: the shipped world CLIP and decoder on 30 world images
    with 3 captions each, 2 short epochs; the given blocks are merged in, the overrides applied last."""
    from fewclip.backbones.model_source import WORLD_ALIAS, WORLD_DECODER_ALIAS
    from fewclip.runner.caption_config import load_caption_config

    def build(*overrides: str, **blocks):
        base = {
            "methods": ["adapter", "prefix", "lora"],
            "seeds": [0],
            "model": {"encoder": WORLD_ALIAS, "decoder": WORLD_DECODER_ALIAS, "device": "cpu", "prefix_length": 4},
            "data": {"source": "world", "world_images": 30, "world_captions_per_image": 3},
            "training": {"epochs": 2, "batch_size": 16, "lr": 3e-3},
            "decode": {"max_length": 12},
            "attention": {"fixed_images": 2},
            "batch_size": 16,
            "output": {"dir": str(tmp_path / "run"), "progress": False},
            "cache": {"dir": str(tmp_path / "cache")},
        }
        for key, value in blocks.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and key != "data" else value
        return load_caption_config(None, list(overrides), base=base)

    return build
