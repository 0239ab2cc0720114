"""The captioning run's config: one YAML with typed blocks and dotted ``key=value`` overrides, as ``fewclip.runner.config``.

Blocks: ``model`` (encoder, decoder and every method's keys), ``data``, ``training``, ``decode``,
``attention``, ``output``, ``cache``, ``runtime``, plus ``methods`` (which of adapter / prefix / lora
train; the ``untrained`` baseline is always evaluated), ``seeds``, ``clipscore_model`` and ``batch_size``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from fewclip.backbones.model_source import config_relative_id
from fewclip.runner.config import (
    CacheConfig,
    ConfigError,
    RuntimeConfig,
    apply_overrides,
    describe_error,
    distinct_seeds,
    read_config_file,
)
from fewclip.configbase import ConfigBlock
from fewclip.registry import unknown_name_message
from fewclip.caption.data import CaptionDataConfig
from fewclip.caption.decode import DecodeConfig
from fewclip.caption.methods import BASELINE, trained_methods
from fewclip.caption.model import CaptionModelConfig
from fewclip.caption.train import CaptionTrainConfig

TRAINED_METHODS: tuple[str, ...] = tuple(trained_methods())


class AttentionConfig(ConfigBlock):
    """Which test images get word-by-word attention panels, per method and seed."""

    fixed_images: int = Field(
        3,
        ge=0,
        description="The first this many test images (by image id), the same for "
        "every method; the highest- and lowest-CLIPScore test images are drawn besides.",
    )
    layer: int = Field(-1, description="Decoder block whose cross-attention is drawn (-1: the last).")


class CaptionOutputConfig(ConfigBlock):
    dir: str = Field("runs/caption", description="Run directory: data, models, results, report.html.")
    progress: bool = Field(True, description="Progress bars; false for quiet runs (CI, scripts).")

    @field_validator("dir")
    @classmethod
    def _dir_named(cls, folder: str) -> str:
        if not folder.strip():
            raise ValueError("empty; name the run directory (e.g. output.dir=runs/my-captions)")
        return folder


class CaptionConfig(ConfigBlock):
    name: str = Field("captioning", description="A label for the run.")
    methods: list[str] = Field(
        default_factory=lambda: list(TRAINED_METHODS),
        description=f"Methods to train, among {', '.join(TRAINED_METHODS)}; the untrained "
        "baseline is always evaluated.",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="One trained captioner per method and seed (the seed draws the new weights and the example order).",
    )
    model: CaptionModelConfig = Field(default_factory=CaptionModelConfig)
    data: CaptionDataConfig = Field(default_factory=CaptionDataConfig)
    training: CaptionTrainConfig = Field(default_factory=CaptionTrainConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    clipscore_model: str | None = Field(
        None, description="CLIP (hub id or folder) for CLIPScore and RefCLIPScore; null: the encoder's own CLIP."
    )
    batch_size: int = Field(
        64, ge=1, description="Images per batch when encoding and decoding (training batches: training.batch_size)."
    )
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    output: CaptionOutputConfig = Field(default_factory=CaptionOutputConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method == BASELINE:
                raise ValueError(
                    f"{BASELINE!r} is the baseline, evaluated in every run; list only the methods to "
                    f"train ({', '.join(TRAINED_METHODS)})"
                )
            if method not in TRAINED_METHODS:
                raise ValueError(unknown_name_message("caption method", method, list(TRAINED_METHODS)))
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods listed twice: {methods}")
        return methods

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return distinct_seeds(seeds)

    @model_validator(mode="after")
    def _one_place_per_value(self) -> "CaptionConfig":
        # a value is set in one place: methods (not model.method) and attention.layer (not model.attention_layer)
        if "method" in self.model.model_fields_set:
            raise ValueError(
                "model.method is set per unit from `methods` (and the untrained baseline); remove "
                "model.method and list the methods in `methods`"
            )
        if "attention_layer" in self.model.model_fields_set:
            raise ValueError("model.attention_layer: set attention.layer instead (the block drawn in the maps)")
        return self

    def unit_model(self, method: str) -> CaptionModelConfig:
        """The model config of one unit: ``model`` with its method and the attention layer filled in."""
        return self.model.model_copy(update={"method": method, "attention_layer": self.attention.layer})

    def units(self) -> list[tuple[str, int]]:
        """(method, seed) of every evaluated captioner: the untrained baseline first, then the trained ones."""
        return [(method, seed) for method in (BASELINE, *self.methods) for seed in self.seeds]

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude={"model": {"method", "attention_layer"}})
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def validate_caption_config(data: dict[str, Any], origin: str = "config") -> CaptionConfig:
    try:
        return CaptionConfig.model_validate(data)
    except ValidationError as err:
        lines = [describe_error(e, data, CaptionConfig) for e in err.errors()]
        raise ConfigError(f"{origin}: invalid caption config\n  " + "\n  ".join(lines)) from None


def _relative_paths(loaded: dict[str, Any], folder: Path) -> None:
    """Model ids and data files written relative in a YAML are read from its folder (when they exist there)."""
    for block, keys in (("model", ("encoder", "decoder")), ("data", ("captions", "image_dir", "id"))):
        values = loaded.get(block)
        if isinstance(values, dict):
            for key in keys:
                if isinstance(values.get(key), str):
                    values[key] = config_relative_id(values[key], folder)
    if isinstance(loaded.get("clipscore_model"), str):
        loaded["clipscore_model"] = config_relative_id(loaded["clipscore_model"], folder)


def load_caption_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None
) -> CaptionConfig:
    """Read a caption YAML config (or start from ``base``), apply dotted overrides, validate."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        loaded = read_config_file(path, "caption config file", "model:, data:, ...")
        _relative_paths(loaded, path.parent)
        data.update(loaded)
    return validate_caption_config(apply_overrides(data, overrides, renames=False), origin)
