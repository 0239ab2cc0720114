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
from typing import Iterator

from fewclip.runner.run_dir import RunDirRules, differing_keys, open_run
from fewclip.caption.config import CaptionConfig, load_caption_config
from fewclip.caption.layout import CaptionLayout

RUN_DEFINING = ("model.encoder", "model.encoder_revision", "model.decoder", "model.decoder_revision", "data")


def _defining(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_DEFINING)


CAPTION_RULES = RunDirRules("caption", load_caption_config, _defining,
                            "captioners trained on other inputs are then trained again")


def caption_config_differences(previous: CaptionConfig, current: CaptionConfig) -> list[str]:
    """``key: <run's value> -> <this value>`` for every run-defining key that differs."""
    return differing_keys(previous, current, _defining)


@contextmanager
def open_caption_run(config: CaptionConfig, force: bool = False) -> Iterator[CaptionLayout]:
    """Claim and lock the config's caption run directory for one command."""
    with open_run(config, force, rules=CAPTION_RULES) as files:
        yield CaptionLayout(files.root)
