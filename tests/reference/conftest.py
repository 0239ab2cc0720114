"""Fixtures the equivalence tests share: the tiny CLIP as fewclip loads it, the reference text tower over its
weights, and the shapes' image sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fewclip.backbones import load_backbone
from fewclip.backbones.config import ModelConfig

from tests.heads.image_tasks import shapes_sets
from tests.reference.dassl_clip import ReferenceCLIPText


@pytest.fixture(scope="session")
def backbone(tiny_clip: Path) -> Any:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="session")
def clip(backbone: Any) -> ReferenceCLIPText:
    return ReferenceCLIPText(backbone)


@pytest.fixture(scope="session")
def shapes(shapes_dir: Path) -> dict[str, Any]:
    return shapes_sets(shapes_dir)
