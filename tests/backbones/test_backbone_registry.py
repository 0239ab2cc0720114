"""A backbone library is one file: ``@register_backbone`` above its backbone class makes ``model.library`` accept
its name, and ``check_backbone``, ``backbone_fingerprint`` and ``load_backbone`` reach it through the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import fewclip.backbones.config
from fewclip.backbones import (
    BACKBONES,
    CLIPBackbone,
    ModelConfig,
    OpenCLIPBackbone,
    backbone_fingerprint,
    check_backbone,
    list_backbones,
    load_backbone,
    register_backbone,
)


def test_the_builtin_libraries_register_themselves_in_their_order() -> None:
    assert list_backbones() == ["hf", "open_clip"]
    assert BACKBONES is fewclip.backbones.config.BACKBONES
    assert BACKBONES.get("hf").backbone is CLIPBackbone and BACKBONES.get("open_clip").backbone is OpenCLIPBackbone


def test_a_library_registered_in_one_place_is_configured_checked_and_loaded(tmp_path: Path) -> None:
    checked: list[str] = []

    def check(config: ModelConfig) -> None:
        if not config.id.startswith("toy/"):
            raise ValueError(f"model.id: {config.id!r} is not a toy model; name one toy/<name>")
        checked.append(config.id)

    def fingerprint(config: ModelConfig, cache_dir: Path | None) -> dict[str, Any] | None:
        return {"model": config.id, "cache": str(cache_dir)}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BACKBONES, "_items", dict(BACKBONES._items))  # the library leaves the registry with the context

        @register_backbone("toy", check=check, fingerprint_from_files=fingerprint)
        class ToyBackbone:
            def __init__(self, config: ModelConfig, cache_dir: Path | None = None) -> None:
                self.config, self.cache_dir = config, cache_dir

        assert list_backbones() == ["hf", "open_clip", "toy"]
        config = ModelConfig(library="toy", id="toy/one")
        check_backbone(config)
        assert checked == ["toy/one"]
        with pytest.raises(ValueError, match="model.id: 'two' is not a toy model"):
            check_backbone(ModelConfig(library="toy", id="two"))
        assert backbone_fingerprint(config, tmp_path) == {"model": "toy/one", "cache": str(tmp_path)}
        loaded = load_backbone(config, tmp_path)
        assert isinstance(loaded, ToyBackbone) and loaded.config is config and loaded.cache_dir == tmp_path

    assert list_backbones() == ["hf", "open_clip"]
    with pytest.raises(ValidationError, match=r"unknown model library 'toy'; valid: hf, open_clip"):
        ModelConfig(library="toy", id="toy/one")


def test_a_library_registered_twice_is_refused() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BACKBONES, "_items", dict(BACKBONES._items))
        with pytest.raises(ValueError, match="model library 'hf' is registered twice"):
            register_backbone("hf", check=lambda config: None, fingerprint_from_files=lambda config, cache: None)(
                type("OtherHF", (), {})
            )
    assert BACKBONES.get("hf").backbone is CLIPBackbone
