"""A trained captioner on disk: its trainable weights (safetensors) and the JSON that rebuilds it.

``captioner.json`` holds the model config, the seed (it draws the new weights the file then
overwrites, and nothing else), the trainable-parameter count and the weights' sha256;
``captioner.safetensors`` holds only the trainable weights: the frozen encoder and decoder are
loaded again from ``config.encoder`` / ``config.decoder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fileio import write_json
from ..heads.artifacts import SAFETENSORS_SHA256, read_artifact_json, read_tensors, write_tensors
from .model import CaptionModel, CaptionModelConfig

WEIGHTS, MANIFEST = "captioner.safetensors", "captioner.json"


def save_caption_model(model: CaptionModel, folder: Path | str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder``/captioner.{safetensors,json}; ``extra`` (e.g. history) goes into the JSON."""
    folder = Path(folder)
    sha256 = write_tensors(folder / WEIGHTS, model.trainable_state())
    write_json(folder / MANIFEST, {"config": model.config.model_dump(mode="json"), "seed": model.seed,
                                   "trainable_params": model.trainable_count(), SAFETENSORS_SHA256: sha256,
                                   **(extra or {})})
    return folder


def load_caption_model(folder: Path | str, **overrides: Any) -> CaptionModel:
    """Rebuild a saved captioner; ``overrides`` replace config keys (e.g. ``device="cpu"``)."""
    folder = Path(folder)
    advice = "train this captioner again"
    manifest = read_artifact_json(folder / MANIFEST, "captioner manifest", advice)
    config = CaptionModelConfig(**{**manifest["config"], **overrides})
    model = CaptionModel(config, seed=int(manifest["seed"]))
    if config.method != "untrained":
        tensors, _ = read_tensors(folder / WEIGHTS, manifest[SAFETENSORS_SHA256], "captioner weights", advice)
        model.load_trainable_state(tensors)
    return model
