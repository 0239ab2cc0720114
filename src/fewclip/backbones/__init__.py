"""Backbones behind one registry (``list_backbones()``); today Hugging Face CLIP."""

from __future__ import annotations

from pathlib import Path

from ..registry import Registry
from . import model_source
from .hf_clip import CLIPBackbone, ModelConfig, resolve_device
from .preprocess import ImageTransform

BACKBONES: Registry[type[CLIPBackbone]] = Registry("backbone")
BACKBONES.register("hf_clip", CLIPBackbone)


def list_backbones() -> list[str]:
    return BACKBONES.names()


def load_backbone(config: ModelConfig, cache_dir: Path | None = None, kind: str = "hf_clip") -> CLIPBackbone:
    return BACKBONES.get(kind)(config, cache_dir=cache_dir)


__all__ = ["BACKBONES", "CLIPBackbone", "ImageTransform", "ModelConfig", "list_backbones", "load_backbone", "model_source",
           "resolve_device"]
