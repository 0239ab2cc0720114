"""What a backbone offers and what a method needs: a head that cannot run on the chosen ``model.library`` is
refused when the config is loaded -- before any stage runs and without loading weights or even importing the
library -- with a message naming the head, the library and what to choose instead."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fewclip.backbones import BACKBONES, CLIPBackbone, OpenCLIPBackbone
from fewclip.backbones.capabilities import capability_problem, libraries_offering
from fewclip.backbones.protocol import CAPABILITIES
from fewclip.heads import HEADS, list_heads
from fewclip.heads.base import Task
from fewclip.heads.encoders.clip_lora import ClipLoraHead
from fewclip.runner.cli import main
from fewclip.runner.config import ConfigError

OPEN_CLIP = ("model.library=open_clip", "model.id=RN50", "model.pretrained=openai")
LORA_REFUSED = (
    "clip_lora needs lora_targets, which the open_clip backbone does not offer; "
    "use model.library=hf or remove clip_lora from methods"
)


@pytest.fixture()
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model of either library, or importing OpenCLIP, fails the test."""
    real = importlib.import_module

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        assert name != "open_clip", "the refusal imported OpenCLIP"
        return real(name, *args, **kwargs)

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a backbone was loaded")

    monkeypatch.setattr(importlib, "import_module", refuse)
    monkeypatch.setattr(CLIPBackbone, "__init__", no_load)
    monkeypatch.setattr(OpenCLIPBackbone, "__init__", no_load)


@pytest.mark.usefixtures("nothing_loads")
def test_clip_lora_on_open_clip_is_refused_when_the_config_is_loaded(make_config: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(*OPEN_CLIP, "methods=[zero_shot,clip_lora]")
    assert str(caught.value).splitlines()[1:] == [f"  model: {LORA_REFUSED}"]


@pytest.mark.usefixtures("nothing_loads")
def test_every_head_the_library_cannot_run_is_named_variants_included(make_config: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(*OPEN_CLIP, "methods=[coop,clip_lora,clip_lora@r4,maple]", variants={"clip_lora@r4": {"rank": 4}})
    variant = LORA_REFUSED.replace("clip_lora ", "clip_lora@r4 ")
    assert str(caught.value).splitlines()[1:] == [f"  model: {LORA_REFUSED}; {variant}"]
    assert "coop" not in str(caught.value) and "maple" not in str(caught.value)  # both run on OpenCLIP


@pytest.mark.usefixtures("nothing_loads")
def test_heads_that_run_on_the_library_load(make_config: Any) -> None:
    config = make_config(*OPEN_CLIP, "methods=[zero_shot,linear_probe,coop,cocoop,maple]")
    assert config.model.library == "open_clip"
    assert make_config("methods=[clip_lora,maple]").methods == ["clip_lora", "maple"]  # hf offers both


@pytest.mark.usefixtures("nothing_loads")
def test_the_cli_refuses_before_the_run_directory_is_touched(
    make_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(make_config("methods=[clip_lora]").to_yaml())
    assert main(["-q", "run", str(config), *OPEN_CLIP]) == 2
    assert LORA_REFUSED in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_head_asked_to_fit_on_a_backbone_without_its_capability_says_the_same(shapes_dir: Path) -> None:
    """A library user who builds the Task by hand gets the config-load message from ``check``, before training."""
    backbone = SimpleNamespace(config=SimpleNamespace(library="open_clip"), offers=OpenCLIPBackbone.offers)
    with pytest.raises(ValueError, match=LORA_REFUSED):
        ClipLoraHead().check(Task(["circle", "square"], ["a photo of a {}."], backbone))  # type: ignore[arg-type]


def test_every_need_is_a_capability_some_library_offers() -> None:
    for name in list_heads():
        needs = HEADS.get(name).needs
        assert needs <= set(CAPABILITIES), name
        assert libraries_offering(needs), f"{name} runs on no registered library"
    for library in BACKBONES.names():
        assert BACKBONES.get(library).offers <= set(CAPABILITIES), library
    assert HEADS.get("clip_lora").needs == {"lora_targets"} and HEADS.get("maple").needs == {"deep_prompts"}


def test_a_need_no_library_offers_only_says_to_remove_the_method(monkeypatch: pytest.MonkeyPatch) -> None:
    assert capability_problem("coop", frozenset(), "open_clip") is None
    monkeypatch.setattr("fewclip.backbones.capabilities.libraries_offering", lambda needs: [])
    assert capability_problem("maple", {"deep_prompts"}, "open_clip", frozenset()) == (
        "maple needs deep_prompts, which the open_clip backbone does not offer; remove maple from methods"
    )


@pytest.mark.usefixtures("nothing_loads")
def test_maple_coupling_on_an_open_clip_resnet_is_refused_at_config_load(make_config: Any, tmp_path: Path) -> None:
    """What one model offers is read from its config JSON (not imported, not loaded): an OpenCLIP ResNet's image
    tower takes no prompts, so MaPLe's coupling is refused naming the model and the key that turns it off, and
    captioning (which needs patch tokens) is refused on it too; a ViT passes."""
    from tests.open_clip_models import TINY_CONFIGS
    from fewclip.caption.model import CaptionModelConfig

    models = {}
    for name in ("fewclip-tiny-rn", "fewclip-tiny-vit"):
        models[name] = tmp_path / f"{name}.json"
        models[name].write_text(json.dumps(TINY_CONFIGS[name]))
    resnet = ("model.library=open_clip", f"model.id={models['fewclip-tiny-rn']}", "model.pretrained=w.pt")
    with pytest.raises(ConfigError) as caught:
        make_config(*resnet, "methods=[coop,maple]")
    message = str(caught.value)
    assert f"maple needs vision_prompts, which the open_clip model '{models['fewclip-tiny-rn']}'" in message
    assert "does not offer; set maple.coupling: false (deep text prompts only) or use model.library=hf" in message
    assert make_config(*resnet, "methods=[coop,maple]", maple={"coupling": False}).methods == ["coop", "maple"]
    vit = ("model.library=open_clip", f"model.id={models['fewclip-tiny-vit']}", "model.pretrained=w.pt")
    assert make_config(*vit, "methods=[maple]").model.id == str(models["fewclip-tiny-vit"])
    with pytest.raises(ValueError, match="captioning needs image_tokens, which the open_clip model"):
        CaptionModelConfig(encoder=str(models["fewclip-tiny-rn"]), encoder_library="open_clip")
    assert CaptionModelConfig(encoder=str(models["fewclip-tiny-vit"]), encoder_library="open_clip")
