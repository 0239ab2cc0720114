"""``fewclip init FOLDER``: a commented YAML of the config ``fewclip run FOLDER`` would run (every key under its
one-line description, the classes with their images and the budgets they allow in the header), which loads as
that config and runs; an existing file is never overwritten without ``--force``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from fewclip.runner.cli import main
from fewclip.runner.config import Config, default_cache_dir, load_config
from fewclip.runner.config_template import first_sentence
from fewclip.runner.folder_config import folder_config
from tests.runner.image_folders import jpeg_folder

TRAIN = {"red_circle": 6, "green_square": 6, "blue_triangle": 2}


@pytest.mark.parametrize("layout", ["classes", "train_test", "train_val"])
def test_init_writes_the_config_run_would_run_with_every_key_explained(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = jpeg_folder(tmp_path / "photos", layout, TRAIN)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "init", "photos"]) == 0
    written = tmp_path / "photos.yaml"  # the folder's name + .yaml in the working directory
    text = written.read_text(encoding="utf-8")
    expected = load_config(None, [], base=folder_config(folder, [], Path(default_cache_dir())))
    assert load_config(written).model_dump() == expected.model_dump()  # every key, the folder path included
    assert "\n  path: photos\n" in text  # relative to the file, where a config's paths are looked for first
    lines = text.splitlines()
    for index, line in enumerate(lines):  # each key (and block) under its one-line comment
        if re.match(r" *[a-z_]+:", line) and not line.strip().startswith("source:"):
            assert lines[index - 1].lstrip().startswith("# "), line
    config = load_config(written)
    for name, field in Config.model_fields.items():
        assert f"\n{name}:" in text
        if not isinstance(getattr(config, name), BaseModel):  # a block's comment is its class's docstring
            assert f"# {first_sentence(field.description or '')}\n{name}:" in text
    assert "  # dir:   (default: ~/.cache/fewclip, or $FEWCLIP_CACHE when set)" in text  # not this machine's
    if layout != "classes":  # a class folder's test share is drawn by a hash of each path
        for name, count in TRAIN.items():
            assert re.search(rf"^#   {name} +{count} +3$", text, flags=re.M)
        assert "the smallest, 'blue_triangle', has 2 train images: shots [1] with 1 validation image(s) per" in text


def test_the_written_yaml_runs_and_is_never_overwritten_without_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jpeg_folder(tmp_path / "photos", "train_test", TRAIN)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "configs" / "mine.yaml"
    out.parent.mkdir()
    assert main(["-q", "init", "photos", "model.id=fewclip/world-clip", "splits.seeds=[1]", "--out", str(out)]) == 0
    assert f"config: {out} (edit it, then: fewclip run {out})" in capsys.readouterr().out
    assert "\n  path: ../photos\n" in out.read_text(encoding="utf-8")
    before = out.read_text(encoding="utf-8")
    assert main(["-q", "init", "photos", "--out", str(out)]) == 2
    assert f"--out {out} exists; give another --out, or --force to overwrite it" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == before
    fast = ["methods=[zero_shot,linear_probe]", "linear_probe.epochs=2", "output.figures=false"]
    assert main(["-q", "run", str(out), *fast, f"cache.dir={tmp_path / 'cache'}"]) == 0
    assert (tmp_path / "runs" / "photos" / "report.html").is_file()
    assert main(["-q", "init", "photos", "--out", str(out), "--force"]) == 0
    assert "id: openai/clip-vit-base-patch32" in out.read_text(encoding="utf-8")


def test_init_refuses_a_folder_without_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "init", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a folder of images" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("description", "sentence"),
    [
        ("Run directory: data (a folder; or this one). More.", "Run directory: data (a folder; or this one)"),
        (
            "Named variants, e.g. `coop@n4: {n_ctx: 4}`: the head. List it.",
            "Named variants, e.g. `coop@n4: {n_ctx: 4}`: the head",
        ),
        ("Progress bars; false for quiet runs.", "Progress bars"),
        ("One line", "One line"),
    ],
)
def test_a_comment_is_the_first_sentence_outside_brackets(description: str, sentence: str) -> None:
    assert first_sentence(description) == sentence
