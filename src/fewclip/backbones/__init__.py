"""Backbones behind one registry, keyed by ``model.library``: ``hf`` (transformers CLIPModel) and
``open_clip`` (OpenCLIP, imported only when chosen). Each implements ``protocol.Backbone``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fewclip.registry import Registry
from fewclip.backbones import model_source
from fewclip.backbones.config import LIBRARIES, ModelConfig
from fewclip.backbones.device import resolve_device
from fewclip.backbones.hf_clip import CLIPBackbone, model_fingerprint
from fewclip.backbones.open_clip_backbone import OpenCLIPBackbone, check_open_clip, open_clip_fingerprint
from fewclip.backbones.preprocess import ImageTransform
from fewclip.backbones.protocol import Backbone, DeepPromptTowers, NotOffered, PromptTower, TextTokens, TunableTowers


@dataclass(frozen=True)
class BackboneKind:
    """How one library's backbones are checked, fingerprinted and loaded, and what they offer."""

    load: Callable[[ModelConfig, Path | None], Backbone]
    fingerprint_from_files: Callable[[ModelConfig, Path | None], dict[str, Any] | None]  # None: load it first
    check: Callable[[ModelConfig], None]  # fast, before any run dir or model load: raises with what to fix
    offers: frozenset[str]  # its class's ``offers`` (protocol.CAPABILITIES), known without loading a model


def _check_hf(config: ModelConfig) -> None:
    model_source.resolve_model(config.id, config.revision)


BACKBONES: Registry[BackboneKind] = Registry("model library")
BACKBONES.register("hf", BackboneKind(lambda c, d: CLIPBackbone(c, cache_dir=d), model_fingerprint, _check_hf,
                                      CLIPBackbone.offers))
BACKBONES.register("open_clip", BackboneKind(lambda c, d: OpenCLIPBackbone(c, cache_dir=d), open_clip_fingerprint,
                                             check_open_clip, OpenCLIPBackbone.offers))
assert tuple(BACKBONES.names()) == LIBRARIES, "config.LIBRARIES must list the registered backbones"


def list_backbones() -> list[str]:
    return BACKBONES.names()


def load_backbone(config: ModelConfig, cache_dir: Path | None = None) -> Backbone:
    return BACKBONES.get(config.library).load(config, cache_dir)


def backbone_fingerprint(config: ModelConfig, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The feature-cache key of ``config``'s model, read from its files without loading it (None when the
    weights are not on disk yet: load the backbone, then ask it)."""
    return BACKBONES.get(config.library).fingerprint_from_files(config, cache_dir)


def check_backbone(config: ModelConfig) -> None:
    """Fail fast, naming the key, on a model that cannot load (missing folder or file, package not installed)."""
    BACKBONES.get(config.library).check(config)


__all__ = ["BACKBONES", "Backbone", "BackboneKind", "CLIPBackbone", "DeepPromptTowers", "ImageTransform", "ModelConfig",
           "NotOffered", "OpenCLIPBackbone", "PromptTower", "TextTokens", "TunableTowers", "backbone_fingerprint",
           "check_backbone", "list_backbones", "load_backbone", "model_source", "resolve_device"]
