"""Where a ``model.id`` points: a shipped alias, a local folder, or a Hugging Face hub id.

Resolved before anything is loaded so that a wrong id fails at once with a message for people: a
path that does not exist says so (not "Repo id must be in the form ..."), and offline a hub id that
is not in the local cache fails without transformers' minutes of retries.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

WORLD_ALIAS = "fewclip/world-clip"  # the CLIP pretrained on the procedural world, shipped in fewclip/world/checkpoint
WORLD_DECODER_ALIAS = "fewclip/world-decoder"  # the tiny GPT-2 pretrained on world captions, in fewclip/world/decoder
TRUE_VALUES = {"1", "on", "yes", "true"}


def model_aliases() -> dict[str, Path]:
    """Short ``model.id`` names of the models fewclip ships."""
    from fewclip.world import CHECKPOINT, DECODER

    return {WORLD_ALIAS: CHECKPOINT, WORLD_DECODER_ALIAS: DECODER}


@dataclass(frozen=True)
class ModelSource:
    """What to hand ``from_pretrained``: a folder or hub id, and whether only local files may be used."""

    location: str
    local_only: bool = False

    @property
    def folder(self) -> Path | None:
        path = Path(self.location)
        return path if path.is_dir() else None


def looks_like_path(model_id: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else with a separator is meant as a folder."""
    if model_id.startswith(("./", "../", "/", "~", ".\\", "..\\")) or model_id in (".", ".."):
        return True
    separators = model_id.count("/") + (model_id.count(os.sep) if os.sep != "/" else 0)
    if separators > 1 or model_id.endswith(("/", os.sep)):
        return True
    parent = Path(model_id).parent  # "models/clip" beside an existing ./models folder is a folder, not a hub id
    return separators == 1 and parent != Path(".") and parent.is_dir()


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in TRUE_VALUES for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 2.0) -> bool:
    """One quick TCP connection to the hub host (once per process)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def in_hub_cache(model_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    return isinstance(found, str)


def resolve_model(model_id: str, revision: str | None = None) -> ModelSource:
    """Alias -> shipped folder; existing folder -> itself; path-like -> error; hub id -> checked offline."""
    aliases = model_aliases()
    if model_id in aliases:
        return ModelSource(str(aliases[model_id]), local_only=True)
    local = Path(model_id).expanduser()
    if local.is_dir():
        return ModelSource(str(local), local_only=True)
    if looks_like_path(model_id):
        raise FileNotFoundError(
            f"model.id: model folder {local} does not exist (a relative model.id in a YAML config is read from the "
            f"config file's folder, on the command line from the working directory); point it at a folder holding "
            f"a Hugging Face CLIP (config.json, weights, tokenizer), or use {WORLD_ALIAS!r}, the shipped world CLIP"
        )
    offline = "HF_HUB_OFFLINE is set" if hub_offline() else ("the hub cannot be reached" if not hub_reachable() else "")
    if not offline:
        return ModelSource(model_id)
    if not in_hub_cache(model_id, revision):
        raise OSError(
            f"model.id: {model_id!r} is not in the local Hugging Face cache and {offline}: only local folders and "
            f"cached models load offline. Download it once with network access, point model.id at a local model "
            f"folder (model.id=path/to/clip: config.json, weights, tokenizer), or use the CLIP shipped with fewclip "
            f"(model.id={WORLD_ALIAS})"
        )
    return ModelSource(model_id, local_only=True)


def config_relative_id(model_id: str, config_dir: Path) -> str:
    """A relative ``model.id`` (or ``model.pretrained``) written in a YAML config names a folder or file
    beside that config when one exists there (then it becomes absolute); anything else (an alias, a hub
    id, an OpenCLIP tag, an absolute path) is kept."""
    if model_id in model_aliases() or Path(model_id).expanduser().is_absolute():
        return model_id
    beside = config_dir / model_id
    return str(beside.resolve()) if beside.exists() else model_id
