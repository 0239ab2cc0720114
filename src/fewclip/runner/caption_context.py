"""The captioning run's context, shared by its stages and its evaluation: a config, its run directory, the split
files and the encoder tokens (loaded on first use); beside it, the fit key of a trained captioner."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from fewclip.backbones import backbone_fingerprint
from fewclip.backbones.model_source import resolve_model
from fewclip.backbones.weights import weights_digest
from fewclip.caption.artifacts import check_manifest
from fewclip.caption.data import CaptionData
from fewclip.caption.encoder_cache import EncoderTokens
from fewclip.caption.methods import CAPTION_METHODS
from fewclip.caption.model import CaptionModel
from fewclip.caption.splits import SPLITS, read_splits
from fewclip.features import FeatureCache
from fewclip.fileio import read_json, remove_stale_temporaries
from fewclip.heads.artifacts import SAFETENSORS_SHA256, DamagedArtifact, read_tensors
from fewclip.interrupt import Progress
from fewclip.runner.caption_config import BASELINE, CaptionConfig
from fewclip.runner.layout import CaptionLayout
from fewclip.runner.skeleton import StageContext

log = logging.getLogger(__name__)


@dataclass
class CaptionRun(StageContext):
    """A caption config, its run directory, and what the stages share (loaded on first use)."""

    config: CaptionConfig
    _data: CaptionData | None = field(default=None, repr=False)
    _tokens: EncoderTokens | None = field(default=None, repr=False)
    _encoder_model: CaptionModel | None = field(default=None, repr=False)
    _weights: dict[str, str] | None = field(default=None, repr=False)

    @property
    def layout(self) -> CaptionLayout:
        return CaptionLayout(self.root)

    @property
    def data(self) -> CaptionData:
        if self._data is None:
            self._data = read_splits(self.layout)
        return self._data

    @property
    def model_weights(self) -> dict[str, str]:
        """sha256 of the encoder's and the decoder's weight files where they are folders (the shipped
        aliases included), so that weights replaced in place retrain; a hub model is named by id and
        revision (the hub's revision pins its files)."""
        if self._weights is None:
            model, weights = self.config.model, {}
            parts = [("decoder", model.decoder, model.decoder_revision)]
            if model.encoder_library == "hf":
                parts.insert(0, ("encoder", model.encoder, model.encoder_revision))
            else:  # another library's model: its own fingerprint of its files
                weights["encoder"] = json.dumps(backbone_fingerprint(model.encoder_model()), sort_keys=True)
            for part, model_id, revision in parts:
                folder = resolve_model(model_id, revision).folder
                weights[part] = (
                    weights_digest(folder, self.cache_root / "weights_sha256.json")
                    if folder
                    else f"{model_id}@{revision or 'main'}"
                )
            self._weights = weights
        return self._weights

    def baseline_model(self) -> CaptionModel:
        """The untrained captioner of the first seed, loaded once: it encodes the images and is evaluated."""
        if self._encoder_model is None:
            self._encoder_model = self.model(BASELINE, self.config.seeds[0])
        return self._encoder_model

    def model(self, method: str, seed: int) -> CaptionModel:
        """A fresh captioner of one unit (its new weights drawn from ``seed``)."""
        return CaptionModel(self.config.unit_model(method), seed=seed)

    def tokens(self) -> EncoderTokens:
        """The encoder tokens of every split's images: cached within the budget."""
        if self._tokens is None:
            images = {item.sha1: item.path for split in SPLITS for item in self.data.split(split)}
            remove_stale_temporaries(self.cache_root / "features")
            self.progress = Progress(len(images), "images encoded", recount=lambda: self._cached_count(list(images)))
            self._tokens = EncoderTokens(
                self.baseline_model(),
                images,
                self.cache_root,
                self.config.training.cache_budget_mb,
                self.config.batch_size,
                progress=self.config.output.progress,
            )
            if self._tokens.failures:
                listed = "\n  ".join(f"{image}: {reason}" for image, reason in self._tokens.failures[:10])
                raise ValueError(
                    f"{len(self._tokens.failures)} image(s) could not be encoded (changed or unreadable "
                    f"since prepare):\n  {listed}\nRun `fewclip caption prepare` again after deleting "
                    f"{self.layout.data / '*.json'}"
                )
        return self._tokens

    def _cached_count(self, sha1s: list[str]) -> int:
        """How many of ``sha1s`` have their encoder tokens cached now (while ``tokens()`` encodes them)."""
        cache = FeatureCache(self.cache_root, self.baseline_model().encoder_fingerprint())
        return len(sha1s) - len(cache.missing(sha1s))


# The model keys that change what any method's captioner learns or says; beside them each method's own keys
# (``CaptionMethod.model_keys``). The other methods' keys, the attention layer drawn and the device change
# nothing (a changed LoRA rank retrains LoRA only).
SHARED_MODEL_KEYS = (
    "encoder",
    "encoder_library",
    "encoder_pretrained",
    "encoder_revision",
    "decoder",
    "decoder_revision",
    "precision",
    "method",
)


def unit_model_keys(config: CaptionConfig, method: str) -> dict[str, Any]:
    """The model config values one unit's results depend on."""
    model = config.unit_model(method).model_dump(mode="json")
    return {key: model[key] for key in (*SHARED_MODEL_KEYS, *CAPTION_METHODS.get(method).model_keys)}


def fit_key(config: CaptionConfig, method: str, seed: int, data: CaptionData, weights: dict[str, str]) -> str:
    """Everything a trained captioner depends on (``weights``: ``CaptionRun.model_weights``); an unchanged
    key is skipped, a changed one retrained."""
    model = unit_model_keys(config, method)
    payload = {
        "model": model,
        "weights": weights,
        "seed": seed,  # the cache budget changes where tokens come from, not their values
        "training": config.training.model_dump(mode="json", exclude={"cache_budget_mb"}),
        "selection": {"max_length": config.decode.max_length},
        "train": [[item.sha1, list(item.captions)] for item in data.train],
        "val": [[item.sha1, list(item.captions)] for item in data.val],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def saved_fit_key(layout: CaptionLayout, method: str, seed: int) -> str | None:
    """The fit key of a saved captioner whose weights are intact; None (trained again) when there is none, or
    its manifest or weights are damaged (then a warning names the file)."""
    folder = layout.model_dir(method, seed)
    manifest = folder / "captioner.json"
    try:
        meta = check_manifest(folder, read_json(manifest), "") if manifest.is_file() else None
        if meta is not None and meta["config"].get("method") != BASELINE:  # the untrained baseline has no weights
            read_tensors(folder / "captioner.safetensors", meta.get(SAFETENSORS_SHA256), "captioner weights")
    except DamagedArtifact as err:
        log.warning("%s: damaged %s (%s); training this captioner again", err.path, err.what, err.reason)
        return None
    except (ValueError, OSError) as err:
        log.warning("%s: unreadable (%s); training this captioner again", manifest, err)
        return None
    return meta.get("fit_key") if isinstance(meta, dict) else None
