"""A frozen Hugging Face ``CLIPModel`` (hub id or local folder) with its tokenizer and preprocessing.

It offers every capability (``protocol.CAPABILITIES``): a tunable copy for LoRA (``hf_tunable``), deep
prompts between its layers (``hf_deep_prompts``) and its vision tower's output tokens (captioning).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from fewclip.backbones.config import ModelConfig, register_backbone
from fewclip.backbones.device import autocast_for, resolve_device
from fewclip.backbones.hf_deep_prompts import HFDeepPromptTowers
from fewclip.backbones.hf_saliency import vision_saliency_pass
from fewclip.backbones.hf_tunable import HFTunableTowers
from fewclip.backbones.model_source import ModelSource, hub_offline, resolve_model
from fewclip.backbones.preprocess import ImageTransform
from fewclip.backbones.prompt_tower import PromptTextTower
from fewclip.backbones.weights import WEIGHT_SUFFIXES, weights_digest

if TYPE_CHECKING:  # for annotations only: transformers is imported where a model is loaded
    from transformers.models.clip.modeling_clip import CLIPModel, CLIPTextModel, CLIPVisionModel

IMAGE_TOKENS_FEATURE = "CLIPVisionModel last_hidden_state (CLS + patches), float32"  # the image-token cache's key


def _resolve_file(source: ModelSource, filename: str, revision: str | None) -> Path | None:
    if source.folder is not None:
        path = source.folder / filename
        return path if path.is_file() else None
    from transformers.utils.hub import cached_file

    try:
        found = cached_file(
            source.location,
            filename,
            revision=revision,
            local_files_only=source.local_only,
            _raise_exceptions_for_missing_entries=False,
        )
    except OSError:
        return None  # not on the hub (or not reachable): loading the model reports it as model.id
    return Path(found) if found else None


def image_processor_settings(source: ModelSource, revision: str | None, model_id: str) -> dict[str, Any]:
    """The image processor's settings, as ``AutoImageProcessor`` finds them: ``preprocessor_config.json``
    (transformers 4), else the ``image_processor`` entry of ``processor_config.json`` (transformers 5)."""
    processor_file = _resolve_file(source, "preprocessor_config.json", revision)
    if processor_file is not None:
        return read_json_file(processor_file)
    processor_file = _resolve_file(source, "processor_config.json", revision)
    settings = read_json_file(processor_file).get("image_processor") if processor_file is not None else None
    if not isinstance(settings, dict):
        raise FileNotFoundError(
            f"model.id: {model_id} has no image processor settings (neither preprocessor_config.json nor an "
            f"image_processor entry in processor_config.json); save the model's processor beside it "
            f"(CLIPProcessor.save_pretrained)"
        )
    return settings


def read_json_file(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        settings: dict[str, Any] = json.load(handle)
    return settings


def load_transform(config: ModelConfig, source: ModelSource | None = None) -> ImageTransform:
    """The model's preprocessing; ``source``: ``config.id`` already resolved (``resolve_model``)."""
    source = source or resolve_model(config.id, config.revision)
    return ImageTransform.from_processor_config(image_processor_settings(source, config.revision, config.id))


def model_fingerprint(
    config: ModelConfig, cache_dir: Path | None = None, source: ModelSource | None = None
) -> dict[str, Any] | None:
    """The feature-cache identity of a model, read from its files without loading it (``source``: ``config.id``
    already resolved).

    None when the weights are not on disk yet (a hub model never downloaded): load the backbone first.
    """
    source = source or resolve_model(config.id, config.revision)
    config_file = _resolve_file(source, "config.json", config.revision)
    if config_file is None or not any(p.suffix in WEIGHT_SUFFIXES for p in config_file.parent.iterdir()):
        return None
    return {
        "model": config.id,
        "revision": config.revision,
        "weights_sha256": weights_digest(config_file.parent, cache_dir / "weights_sha256.json" if cache_dir else None),
        "preprocess": load_transform(config, source).to_dict(),
        "precision": config.precision,
        "feature": "projected image embedding, unnormalised, float32",
    }


class HFImageEncoder(nn.Module):
    """A ``CLIPModel``'s image tower and projection: pixels -> unnormalised features (``Backbone.image_encoder``)."""

    def __init__(self, clip_model: CLIPModel) -> None:
        super().__init__()
        self.clip_model = clip_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.clip_model.get_image_features(pixel_values=pixels).pooler_output
        return features.float()


def check_hf_model(config: ModelConfig) -> None:
    """Fail fast, naming the key, on a model that is neither a folder nor a hub id that can be reached."""
    resolve_model(config.id, config.revision)


class HFTextTokens:
    """A Hugging Face CLIP tokenizer as ``TextTokens``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.sos_id, self.eot_id = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)

    def word_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]


@register_backbone("hf", check=check_hf_model, fingerprint_from_files=model_fingerprint)
class CLIPBackbone:
    """Frozen CLIP: ``encode_images`` on preprocessed pixels, ``encode_text`` on strings.

    Both return projected, *unnormalised* features as float32 on the CPU.
    """

    offers: ClassVar[frozenset[str]] = frozenset({"lora_targets", "deep_prompts", "vision_prompts", "image_tokens"})

    def __init__(self, config: ModelConfig, cache_dir: Path | None = None) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.config = config
        self.device = resolve_device(config.device)
        source = resolve_model(config.id, config.revision)  # a wrong id or an offline hub id fails here, fast
        try:
            # fp32 weights whatever the checkpoint stores (the shipped world CLIP is fp16 on disk);
            # model.precision sets the autocast compute type
            options: dict[str, Any] = dict(revision=config.revision, local_files_only=source.local_only)
            self.model = CLIPModel.from_pretrained(source.location, dtype=torch.float32, **options)
            self.tokenizer = AutoTokenizer.from_pretrained(source.location, **options)
        except OSError as err:
            offline = " (HF_HUB_OFFLINE is set: only local folders and cached models load)" if hub_offline() else ""
            raise OSError(f"model.id: cannot load CLIP {config.id!r}{offline}: {err}") from err
        # transformers leaves PreTrainedModel.eval() unannotated
        self.model.eval().requires_grad_(False).to(self.device)  # type: ignore[no-untyped-call]
        self.source, self.cache_dir = source, cache_dir
        self.transform = load_transform(config, source)
        self._fingerprint: dict[str, Any] | None = None  # hashed when first asked for (the weights may be large)
        self.tokens = HFTextTokens(self.tokenizer)
        self.image_batches_encoded = 0  # counted so tests and logs can see cache hits

    @property
    def dim(self) -> int:
        return self.model.text_projection.out_features

    @property
    def max_text_positions(self) -> int:
        """Token positions of the text tower (SOS and EOT included): the longest prompt it can read."""
        text: CLIPTextModel = self.model.text_model  # transformers builds it untyped (_from_config)
        return int(text.config.max_position_embeddings)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast_for(self.config.precision, self.device)

    def prompt_tower(self) -> PromptTextTower:
        return PromptTextTower(self.model)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes an image feature: weights, preprocessing, precision."""
        if self._fingerprint is None:
            fingerprint = model_fingerprint(self.config, self.cache_dir, self.source)
            assert fingerprint is not None, f"model.id: no weight files found for {self.config.id}"
            self._fingerprint = fingerprint
        return dict(self._fingerprint)

    def image_tokens_fingerprint(self) -> dict[str, Any]:
        return {**self.fingerprint(), "feature": IMAGE_TOKENS_FEATURE}

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(batch, 3, H, W) float pixels (``np.stack`` of ``transform`` outputs, or a tensor) -> (batch, dim) features."""
        pixels = torch.as_tensor(pixels)
        self.image_batches_encoded += 1
        with self.autocast():
            out: torch.Tensor = self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output
        return out.float().cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> (n, dim) features. Padded to the longest in each batch (exact under the causal mask).

        Never truncates: a text longer than the text tower's positions is an error naming it.
        """
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            tokens = self.tokenizer(batch, padding=True, truncation=False, verbose=False, return_tensors="pt")
            if tokens["input_ids"].shape[1] > self.max_text_positions:
                lengths = tokens["attention_mask"].sum(dim=1)
                longest = int(lengths.argmax())
                raise ValueError(
                    f"text {batch[longest]!r} needs {int(lengths[longest])} tokens but model {self.config.id} reads at "
                    f"most {self.max_text_positions} (text_config.max_position_embeddings); shorten it"
                )
            with self.autocast():
                out = self.model.get_text_features(**tokens.to(self.device)).pooler_output
            chunks.append(out.float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

    def saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and the patch tokens the vision tower's last layer attends over (``vision_saliency_pass``)."""
        features, activations = vision_saliency_pass(self.model, pixels, self.device)
        return features.cpu(), activations

    def image_encoder(self) -> nn.Module:
        return HFImageEncoder(self.model)

    def tunable_towers(self) -> HFTunableTowers:
        return HFTunableTowers(self.model, self.tokenizer, self.device)

    def deep_prompt_towers(self) -> HFDeepPromptTowers:
        return HFDeepPromptTowers(self.model)

    @property
    def image_token_shape(self) -> tuple[int, int]:
        vision: CLIPVisionModel = self.model.vision_model  # transformers builds it untyped (_from_config)
        return vision.embeddings.num_positions, int(vision.config.hidden_size)  # positions: class token + patches

    @torch.no_grad()
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower's ``last_hidden_state``: CLS + patch tokens, before ``post_layernorm`` (which CLIP
        trains only on the pooled CLS token)."""
        with self.autocast():
            out = self.model.vision_model(pixel_values=torch.as_tensor(pixels).to(self.device))
        hidden: torch.Tensor = out.last_hidden_state
        return hidden.float()
