"""A frozen Hugging Face ``CLIPModel`` (hub id or local folder) with its tokenizer and preprocessing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fewclip.backbones.config import ModelConfig, register_backbone
from fewclip.backbones.device import autocast_for, resolve_device
from fewclip.backbones.model_source import ModelSource, hub_offline, resolve_model
from fewclip.backbones.preprocess import ImageTransform
from fewclip.backbones.prompt_tower import PromptTextTower
from fewclip.backbones.weights import WEIGHT_SUFFIXES, weights_digest

def _resolve_file(source: ModelSource, filename: str, revision: str | None) -> Path | None:
    if source.folder is not None:
        path = source.folder / filename
        return path if path.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(source.location, filename, revision=revision, local_files_only=source.local_only,
                            _raise_exceptions_for_missing_entries=False)
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
        return json.load(handle)


def load_transform(config: ModelConfig) -> ImageTransform:
    source = resolve_model(config.id, config.revision)
    return ImageTransform.from_processor_config(image_processor_settings(source, config.revision, config.id))


def model_fingerprint(config: ModelConfig, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The feature-cache identity of a model, read from its files without loading it.

    None when the weights are not on disk yet (a hub model never downloaded): load the backbone first.
    """
    config_file = _resolve_file(resolve_model(config.id, config.revision), "config.json", config.revision)
    if config_file is None or not any(p.suffix in WEIGHT_SUFFIXES for p in config_file.parent.iterdir()):
        return None
    return {
        "model": config.id,
        "revision": config.revision,
        "weights_sha256": weights_digest(config_file.parent, cache_dir / "weights_sha256.json" if cache_dir else None),
        "preprocess": load_transform(config).to_dict(),
        "precision": config.precision,
        "feature": "projected image embedding, unnormalised, float32",
    }


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
        self.model.eval().requires_grad_(False).to(self.device)
        self.transform = load_transform(config)
        fingerprint = model_fingerprint(config, cache_dir)
        assert fingerprint is not None, f"model.id: no weight files found for {config.id}"
        self._fingerprint = fingerprint
        self.tokens = HFTextTokens(self.tokenizer)
        self.image_batches_encoded = 0  # counted so tests and logs can see cache hits

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def max_text_positions(self) -> int:
        """Token positions of the text tower (SOS and EOT included): the longest prompt it can read."""
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast_for(self.config.precision, self.device)

    def prompt_tower(self) -> PromptTextTower:
        return PromptTextTower(self.model)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes an image feature: weights, preprocessing, precision."""
        return dict(self._fingerprint)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(batch, 3, H, W) float pixels (``np.stack`` of ``transform`` outputs, or a tensor) -> (batch, dim) features."""
        pixels = torch.as_tensor(pixels)
        self.image_batches_encoded += 1
        with self.autocast():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output
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
        """Features and the patch tokens *entering* the vision tower's last layer (``vision_saliency_pass``)."""
        features, activations = vision_saliency_pass(self.model, pixels, self.device)
        return features.cpu(), activations


@contextlib.contextmanager
def last_layer_patches(model: Any, trailing: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """While active, the patch tokens that an HF ``CLIPModel``'s last vision layer *normalises* for its
    attention (``layer_norm1``'s output) are captured as a (n, g, g, width) view on the forward graph, in
    the yielded dict under ``"patches"``. ``trailing``: tokens after the patches left out (MaPLe's prompts).

    Why the normalised tokens: the image feature is read from the CLS token, which reads the patches only
    through this LayerNorm, and a LayerNorm ignores its input's scale, so the gradient at its *input* is
    orthogonal to that input token by token (up to its eps): gradient x activation there sums to rounding
    noise. At its output the product is the evidence Grad-CAM for ViTs reads (pytorch-grad-cam's ViT
    recipe takes the last block's ``norm1`` for the same reason).
    """
    captured: dict[str, torch.Tensor] = {}

    def route(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
        end = output.shape[1] - trailing
        grid = int(round((end - 1) ** 0.5))
        patches = output[:, 1:end].reshape(len(output), grid, grid, -1)  # the layer reads the patches through this view
        if patches.requires_grad:
            patches.retain_grad()  # .backward() callers read patches.grad
        captured["patches"] = patches
        return torch.cat([output[:, :1], patches.flatten(1, 2), output[:, end:]], dim=1)

    handle = model.vision_model.encoder.layers[-1].layer_norm1.register_forward_hook(route)
    try:
        yield captured
    finally:
        handle.remove()


def vision_saliency_pass(model: Any, pixels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """An HF ``CLIPModel``'s (n, d) image features (float32, on ``device``) and the normalised patch tokens its
    vision tower's last layer attends over, (n, g, g, width), on one autograd graph (``last_layer_patches``).
    Serves the frozen backbone and a head's tuned copy of the model alike (clip_lora)."""
    with last_layer_patches(model) as captured:
        features = model.get_image_features(pixel_values=pixels.to(device)).pooler_output.float()
    return features, captured["patches"]
