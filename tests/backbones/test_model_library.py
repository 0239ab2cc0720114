"""`model.library` at config load, and OpenCLIP chosen where it is not installed."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from fewclip.backbones import check_backbone
from fewclip.backbones.config import ModelConfig
from fewclip.runner.cli import main
from fewclip.runner.config import ConfigError


def test_unknown_library_names_the_nearest(make_config: Any) -> None:
    with pytest.raises(
        ConfigError, match=r"model.library.*unknown model library 'openclip' \(did you mean 'open_clip'\?\)"
    ):
        make_config("model.library=openclip")


def test_pretrained_and_revision_belong_to_their_library(make_config: Any) -> None:
    with pytest.raises(ConfigError, match="model.pretrained is for model.library: open_clip"):
        make_config("model.pretrained=openai")
    with pytest.raises(ConfigError, match="model.revision is for Hugging Face hub ids"):
        make_config("model.library=open_clip", "model.id=RN50", "model.pretrained=openai", "model.revision=main")


@pytest.fixture()
def without_open_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "open_clip":
            raise ModuleNotFoundError("No module named 'open_clip'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", refuse)


@pytest.mark.usefixtures("without_open_clip")
def test_open_clip_missing_says_what_to_install(
    make_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ImportError, match=r"pip install 'fewclip\[open_clip\]'.*bash setup.sh --open-clip"):
        check_backbone(ModelConfig(library="open_clip", id="RN50", pretrained="openai"))
    config = tmp_path / "c.yaml"
    config.write_text(make_config("model.library=open_clip", "model.id=RN50", "model.pretrained=openai").to_yaml())
    assert main(["-q", "run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "needs the OpenCLIP package" in err and "fewclip[open_clip]" in err
    assert not (tmp_path / "run").exists()  # failed before the run dir was claimed


@pytest.mark.usefixtures("without_open_clip")
def test_predict_on_an_open_clip_run_without_open_clip_says_what_to_install(
    make_config: Any, tmp_path: Path, shapes_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(make_config("methods=[zero_shot]", "few_shot.shots=[1]").to_yaml())
    assert main(["-q", "run", str(config)]) == 0
    resolved = tmp_path / "run" / "config.yaml"  # as a run on OpenCLIP RN50 would have written it
    data = yaml.safe_load(resolved.read_text())
    data["model"].update(library="open_clip", id="RN50", pretrained="openai")
    resolved.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["-q", "predict", str(tmp_path / "run"), str(next(shapes_dir.rglob("*.png")))]) == 2
    err = capsys.readouterr().err
    assert "needs the OpenCLIP package" in err and "fewclip[open_clip]" in err
