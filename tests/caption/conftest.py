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
        return CaptionModelConfig(encoder=str(tiny_clip), decoder=str(tiny_decoder), device="cpu",
                                  prefix_length=4, **overrides)

    return build
