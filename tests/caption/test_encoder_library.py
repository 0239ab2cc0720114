"""``model.encoder_library``: captioning takes its encoder from any backbone library that offers the image tower's
tokens; one that does not is refused when the config is read, naming the key and the libraries that would do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fewclip.backbones import BACKBONES, ModelConfig, register_backbone
from fewclip.caption.model import CaptionModelConfig
from fewclip.fileio import read_csv
from fewclip.runner.cli import main
from fewclip.runner.layout import CaptionLayout
from tests.open_clip_models import build_open_clip, require_open_clip


def test_the_encoder_block_is_a_model_block_of_its_library() -> None:
    config = CaptionModelConfig(encoder="some/clip", encoder_revision="v1", precision="bf16", device="cpu")
    assert config.encoder_model() == ModelConfig(
        library="hf", id="some/clip", revision="v1", precision="bf16", device="cpu"
    )
    with pytest.raises(ValidationError, match="unknown model library 'nope'; valid: hf, open_clip"):
        CaptionModelConfig(encoder_library="nope")
    with pytest.raises(ValidationError, match="model.pretrained is for model.library: open_clip"):
        CaptionModelConfig(encoder_pretrained="openai")


def test_a_library_without_image_tokens_is_refused_at_config_load() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BACKBONES, "_items", dict(BACKBONES._items))  # the library leaves the registry with the context

        @register_backbone("pooled", check=lambda config: None, fingerprint_from_files=lambda config, cache: None)
        class PooledOnly:  # a library whose models give pooled features alone
            offers = frozenset({"lora_targets"})

        with pytest.raises(ValidationError) as refused:
            CaptionModelConfig(encoder="any", encoder_library="pooled")
        message = str(refused.value)
        assert "captioning needs image_tokens, which the pooled model 'any' does not offer" in message
        assert "use model.encoder_library=hf or use model.encoder_library=open_clip" in message


@pytest.mark.open_clip
@pytest.mark.slow
def test_a_caption_run_on_an_open_clip_encoder(world_caption_config: Any, tmp_path: Path) -> None:
    """The whole captioning run (prepare, encode, train, evaluate with CLIPScore from the encoder's own CLIP,
    report) with an OpenCLIP ViT named in the YAML."""
    require_open_clip()
    config_file, weights = build_open_clip(tmp_path / "vit", "fewclip-tiny-vit")
    model = {"encoder": str(config_file), "encoder_library": "open_clip", "encoder_pretrained": str(weights)}
    config = world_caption_config(methods=["lora"], model=model)
    assert config.model.encoder_model().library == "open_clip"
    path = tmp_path / "caption.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    assert main(["-q", "caption", "run", str(path)]) == 0
    rows = read_csv(CaptionLayout(tmp_path / "run").summary)
    assert {r["method"] for r in rows} == {"untrained", "lora"}
    assert all(float(r["clipscore"]) > 0 for r in rows if r["split"] == "test")
