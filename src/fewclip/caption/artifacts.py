"""A trained captioner on disk: its trainable weights (safetensors) and the JSON that rebuilds it.

``captioner.json`` holds the model config, the seed (it draws the new weights the file then
overwrites, and nothing else), the trainable-parameter count and the weights' sha256;
``captioner.safetensors`` holds only the trainable weights: the frozen encoder and decoder are
loaded again from ``config.encoder`` / ``config.decoder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewclip.fileio import write_json
from fewclip.heads.artifacts import SAFETENSORS_SHA256, DamagedArtifact, read_artifact_json, read_tensors, write_tensors
from fewclip.heads.base import MEANING_SHA256, meaning_digest
from fewclip.caption.methods import CAPTION_METHODS
from fewclip.caption.model import CaptionModel, CaptionModelConfig

WEIGHTS, MANIFEST = "captioner.safetensors", "captioner.json"


def save_caption_model(model: CaptionModel, folder: Path | str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder``/captioner.{safetensors,json}; ``extra`` (e.g. history) goes into the JSON."""
    folder = Path(folder)
    sha256 = write_tensors(folder / WEIGHTS, model.trainable_state())
    manifest = {
        "config": model.config.model_dump(mode="json"),
        "seed": model.seed,
        "trainable_params": model.trainable_count(),
        SAFETENSORS_SHA256: sha256,
        **(extra or {}),
    }
    write_json(folder / MANIFEST, {**manifest, MEANING_SHA256: meaning_digest(manifest, MEANING)})
    return folder


MEANING = ("config", "seed", SAFETENSORS_SHA256)  # what rebuilds the model the weights belong to


def check_manifest(folder: Path, manifest: Any, advice: str) -> dict[str, Any]:
    """``manifest`` if it is a captioner's and unedited (``MEANING``); ``DamagedArtifact`` naming it if not."""
    file = folder / MANIFEST
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise DamagedArtifact(file, "captioner manifest", "not a fewclip captioner description", advice)
    recorded = manifest.get(MEANING_SHA256)
    if recorded is not None and recorded != meaning_digest(manifest, MEANING):
        raise DamagedArtifact(
            file,
            "captioner manifest",
            "its config, seed or weights' checksum differ from the ones it was saved with: edited after training",
            advice,
        )
    return manifest


def load_caption_model(folder: Path | str, **overrides: Any) -> CaptionModel:
    """Rebuild a saved captioner; ``overrides`` replace config keys (e.g. ``device="cpu"``)."""
    folder = Path(folder)
    advice = "train this captioner again"
    manifest = check_manifest(folder, read_artifact_json(folder / MANIFEST, "captioner manifest", advice), advice)
    config = CaptionModelConfig(**{**manifest["config"], **overrides})
    model = CaptionModel(config, seed=int(manifest["seed"]))
    if CAPTION_METHODS.get(config.method).trains:
        tensors, _ = read_tensors(folder / WEIGHTS, manifest[SAFETENSORS_SHA256], "captioner weights", advice)
        model.load_trainable_state(tensors)
    return model
