"""Claiming a caption run directory for one command, with the rules of ``fewclip.run_dir``.

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

from ..config import ConfigError
from ..run_dir import RunDirError, claim, flatten_keys, locked
from .config import CaptionConfig, load_caption_config
from .layout import CaptionLayout

RUN_DEFINING = ("model.encoder", "model.encoder_revision", "model.decoder", "model.decoder_revision", "data")


def caption_root(config: CaptionConfig) -> Path:
    return Path(config.output.dir).expanduser()


def _defining(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_DEFINING)


def caption_config_differences(previous: CaptionConfig, current: CaptionConfig) -> list[str]:
    """``key: <run's value> -> <this value>`` for every run-defining key that differs."""
    before, after = flatten_keys(previous.model_dump(mode="json")), flatten_keys(current.model_dump(mode="json"))
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if _defining(key) and before.get(key) != after.get(key)]


def check_same_caption_config(layout: CaptionLayout, config: CaptionConfig) -> None:
    """Refuse a config whose encoder, decoder or data differ from the run directory's ``config.yaml``."""
    if not layout.config.is_file():
        return
    try:
        previous = load_caption_config(layout.config)
    except ConfigError as err:
        raise RunDirError(f"{layout.config} (the run's config) is not a caption config this fewclip loads: {err}\n"
                          "Choose another output.dir, or pass --force to replace it with this config") from None
    differences = caption_config_differences(previous, config)
    if differences:
        listed = "\n  ".join(differences)
        raise RunDirError(
            f"output.dir {layout.root} holds a caption run of a different config ({layout.config}); "
            f"run-defining keys differ (run's value -> this config's):\n  {listed}\n"
            "Choose another output.dir for this config, or pass --force to replace the run's config "
            "(captioners trained on other inputs are then trained again)")


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
