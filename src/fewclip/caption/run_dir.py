"""Claiming a caption run directory for one command, with the rules of ``fewclip.runner.run_dir``.

The same marker (a folder fewclip created or found empty), the same exclusive lock, and the same
refusal of a config whose run-defining keys differ from the run's ``config.yaml`` unless forced. For
captioning the run-defining keys are the encoder, the decoder and the data; every other key may
change, because a trained captioner records a fit key over its own inputs (and is retrained when it
changes) and an evaluation records its key likewise. Caption sources list their image files one by
one, so a run directory inside an image folder never becomes data (no location check is needed).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fewclip.runner.run_dir import claim, differing_keys, locked, refuse_other_config
from fewclip.caption.config import CaptionConfig, load_caption_config
from fewclip.caption.layout import CaptionLayout

RUN_DEFINING = ("model.encoder", "model.encoder_revision", "model.decoder", "model.decoder_revision", "data")


def caption_root(config: CaptionConfig) -> Path:
    return Path(config.output.dir).expanduser()


def _defining(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_DEFINING)


def caption_config_differences(previous: CaptionConfig, current: CaptionConfig) -> list[str]:
    """``key: <run's value> -> <this value>`` for every run-defining key that differs."""
    return differing_keys(previous, current, _defining)


def check_same_caption_config(layout: CaptionLayout, config: CaptionConfig) -> None:
    """Refuse a config whose encoder, decoder or data differ from the run directory's ``config.yaml``."""
    refuse_other_config(layout.root, layout.config, load_caption_config,
                        lambda previous: caption_config_differences(previous, config), "caption",
                        "captioners trained on other inputs are then trained again")


@contextmanager
def open_caption_run(config: CaptionConfig, force: bool = False) -> Iterator[CaptionLayout]:
    """Claim and lock the config's caption run directory for one command."""
    root = caption_root(config)
    claim(root)
    with locked(root):
        layout = CaptionLayout(root)
        if not force:
            check_same_caption_config(layout, config)
        yield layout
