"""Backbones behind one registry, keyed by ``model.library``: ``hf`` (transformers CLIPModel) and
``open_clip`` (OpenCLIP; importing its module does not import ``open_clip``). Each implements ``protocol.Backbone``
and registers itself where it is defined (``@register_backbone`` above its class, ``config.py``); importing the
library modules here fills the registry, in this order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewclip.backbones import model_source
from fewclip.backbones.config import BACKBONES, BackboneLibrary, ModelConfig, register_backbone
from fewclip.backbones.device import resolve_device
from fewclip.backbones.hf_clip import CLIPBackbone
from fewclip.backbones.open_clip_backbone import OpenCLIPBackbone
from fewclip.backbones.preprocess import ImageTransform
from fewclip.backbones.protocol import Backbone, DeepPromptTowers, NotOffered, PromptTower, TextTokens, TunableTowers


def list_backbones() -> list[str]:
    return BACKBONES.names()


def load_backbone(config: ModelConfig, cache_dir: Path | None = None) -> Backbone:
    backbone: Backbone = BACKBONES.get(config.library).backbone(config, cache_dir=cache_dir)
    return backbone


def backbone_fingerprint(config: ModelConfig, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The feature-cache key of ``config``'s model, read from its files without loading it (None when the
    weights are not on disk yet: load the backbone, then ask it)."""
    return BACKBONES.get(config.library).fingerprint_from_files(config, cache_dir)


def check_backbone(config: ModelConfig) -> None:
    """Fail fast, naming the key, on a model that cannot load (missing folder or file, package not installed)."""
    BACKBONES.get(config.library).check(config)


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneLibrary",
    "CLIPBackbone",
    "DeepPromptTowers",
    "ImageTransform",
    "ModelConfig",
    "NotOffered",
    "OpenCLIPBackbone",
    "PromptTower",
    "TextTokens",
    "TunableTowers",
    "backbone_fingerprint",
    "check_backbone",
    "list_backbones",
    "load_backbone",
    "model_source",
    "register_backbone",
    "resolve_device",
]
