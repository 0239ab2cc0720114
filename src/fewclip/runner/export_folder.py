"""The exported classifier folder (``fewclip export``): what it holds and how it is read back.

A folder holds ``classifier.json`` (written last: it marks a complete export) and the head's own files,
``head.safetensors`` + ``head.json``, copied byte for byte from the run (so ``load_head`` checks them against their
recorded sha256 as it checks a run's). The backbone is not copied: ``classifier.json`` references it by its
``model`` block and the fingerprint of the weights and preprocessing the head was trained on, and loading refuses
a model whose fingerprint differs, naming what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewclip.backbones.protocol import Backbone
from fewclip.heads.artifacts import DamagedArtifact, read_artifact_json

EXPORT_FILE = "classifier.json"  # written last
HEAD_STEM = "head"  # head.safetensors + head.json
ONNX_FILE = "classifier.onnx"  # --format onnx: pixels -> probabilities
MERGED_DIR = "merged"  # --merged: the tuned CLIP, adapters merged, as the library's own model folder
TEXT_FEATURES_FILE = "class_text_features.safetensors"  # --merged: what the merged model's images are scored against
EXPORT_FORMAT = "fewclip-classifier"
EXPORT_VERSION = 1
REEXPORT_ADVICE = "export it again with `fewclip export RUN_DIR --out DIR`"


class ModelMismatch(ValueError):
    """The model an exported classifier names no longer has the fingerprint its head was trained on."""


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an exported classifier (not a run directory)."""
    return (folder / EXPORT_FILE).is_file()


def read_export(folder: Path) -> dict[str, Any]:
    """``classifier.json`` of an exported folder; ``DamagedArtifact`` naming it when it is not one."""
    file = folder / EXPORT_FILE
    document = read_artifact_json(file, "exported classifier", REEXPORT_ADVICE)
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise DamagedArtifact(file, "exported classifier", f"not a {EXPORT_FORMAT} description", REEXPORT_ADVICE)
    if document.get("version") != EXPORT_VERSION:
        raise DamagedArtifact(
            file,
            "exported classifier",
            f"format version {document.get('version')!r}; this fewclip reads version {EXPORT_VERSION}",
            REEXPORT_ADVICE,
        )
    return document


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: recorded X, now Y' for every fingerprint entry that differs (weights, preprocessing, precision, ...)."""
    return [
        f"{key}: recorded {recorded.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]


def check_model(document: dict[str, Any], backbone: Backbone, folder: Path) -> None:
    """Refuse a backbone whose fingerprint differs from the one the exported head was trained on."""
    current = json.loads(json.dumps(backbone.fingerprint()))  # as recorded: tuples read back as lists
    differences = fingerprint_differences(document["fingerprint"], current)
    if differences:
        raise ModelMismatch(
            f"{folder / EXPORT_FILE}: model {document['model']['id']!r} is not the one the head was trained on; "
            f"what differs: {'; '.join(differences)}. Put the original model back at that reference, or export "
            "the head again from a run on the model you have"
        )
