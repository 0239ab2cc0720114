"""The config for a folder of the user's captioned images: ``fewclip caption run FOLDER``.

The folder holds its images and one captions file at its top: a CSV of ``path,caption`` rows (one row per
reference; paths relative to the folder) or a COCO caption JSON (``images`` with ``id``/``file_name``,
``annotations`` with ``image_id``/``caption``; file names relative to the folder, or to its ``images/`` folder).
The config is built from the caption config's own defaults (GPT-2, ``gpt2``, as the decoder; adapter, prefix and
LoRA; one seed), not from the embedded world default, with a real CLIP as the encoder
(``openai/clip-vit-base-patch32``); ``model.encoder=...`` / ``model.decoder=...`` name others
(``fewclip/world-clip`` and ``fewclip/world-decoder`` load offline). ``output.dir`` is ``runs/<folder name>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from fewclip.runner.config import ConfigError
from fewclip.runner.layout import RunFiles

ENCODER = "openai/clip-vit-base-patch32"  # the classification default's CLIP
RUN_MARKER = RunFiles(Path()).marker.name


def captions_files(folder: Path) -> list[Path]:
    """The CSV and JSON files at the top of ``folder`` (the candidates for its captions file)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".json"))


def is_caption_folder(folder: Path) -> bool:
    """Whether a folder given where a caption config goes is meant as a folder of captioned images: it holds a CSV
    or JSON file and is not a run directory (which has a marker and, once a stage ran, config.yaml)."""
    if (folder / "config.yaml").is_file() or (folder / RUN_MARKER).exists():
        return False
    return bool(captions_files(folder))


def coco_image_dir(folder: Path, captions: Path) -> Path:
    """Where a COCO file's ``file_name``s are: the folder itself, or its ``images/`` folder when the first image is
    there and not in the folder."""
    try:
        images = json.loads(captions.read_text(encoding="utf-8")).get("images") or []
    except (OSError, ValueError, AttributeError):
        return folder  # not a COCO file: reading it for the run names the problem
    first = str(images[0].get("file_name", "")) if images and isinstance(images[0], dict) else ""
    nested = folder / "images"
    return nested if first and not (folder / first).exists() and (nested / first).exists() else folder


def caption_folder_config(folder: Path, overrides: Sequence[str], cache_dir: Path) -> dict[str, Any]:
    """The base config of ``fewclip caption run FOLDER [overrides]``; a ``ConfigError`` naming the files when the
    folder holds several candidates for its captions file."""
    files = captions_files(folder)
    if len(files) != 1:
        raise ConfigError(
            f"{folder}: a folder of captioned images holds one captions file (a path,caption CSV or a COCO JSON) "
            f"beside its images; found {', '.join(p.name for p in files) or 'none'}. Keep one, or write a caption "
            "YAML config naming data.captions"
        )
    captions, root = files[0], folder.resolve()
    if captions.suffix.lower() == ".csv":
        data = {"source": "csv", "captions": str(captions.resolve()), "image_dir": str(root)}
    else:
        data = {"source": "coco", "captions": str(captions.resolve()), "image_dir": str(coco_image_dir(root, captions))}
    return {
        "name": root.name,
        "model": {"encoder": ENCODER},
        "data": data,
        "output": {"dir": f"runs/{root.name}"},
        "cache": {"dir": str(cache_dir)},
    }
