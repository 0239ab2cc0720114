"""``fewclip caption run FOLDER``: a folder of the user's images with one captions file beside them (a
``path,caption`` CSV, or a COCO JSON naming files in the folder or its ``images/``) runs with the config built for
it; a folder with several candidates is refused naming them; offline, an encoder not in the cache fails before
anything is written, naming the shipped world CLIP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fewclip.caption.tiny import toy_caption_images
from fewclip.fileio import read_csv
from fewclip.runner.caption_folder import ENCODER, caption_folder_config, is_caption_folder
from fewclip.runner.cli import main
from fewclip.runner.config import ConfigError
from fewclip.runner.layout import CaptionLayout

WORLD = ["model.encoder=fewclip/world-clip", "model.decoder=fewclip/world-decoder"]
FAST = [*WORLD, "methods=[lora]", "training.epochs=1", "decode.max_length=8", "attention.fixed_images=1"]


def csv_folder(folder: Path) -> Path:
    pairs = toy_caption_images(folder, per_colour=5, seed=0)
    with open(folder / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "caption"])
        writer.writerows((path.name, caption) for path, caption in pairs)
    return folder


def test_a_folder_with_a_captions_csv_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = csv_folder(tmp_path / "my captions")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEWCLIP_CACHE", str(tmp_path / "cache"))
    assert is_caption_folder(folder) and not is_caption_folder(tmp_path)  # no captions file at its top
    assert main(["-q", "caption", "run", str(folder), *FAST]) == 0
    rows = read_csv(CaptionLayout(tmp_path / "runs" / "my captions").summary)
    assert {r["method"] for r in rows} == {"untrained", "lora"} and all(r["cider"] for r in rows)
    assert sum(int(r["n_eval"]) for r in rows if r["method"] == "lora") > 0


def test_the_config_reads_the_folder(tmp_path: Path) -> None:
    folder = csv_folder(tmp_path / "shots")
    base = caption_folder_config(folder, [], tmp_path / "cache")
    assert base["model"] == {"encoder": ENCODER} and base["output"] == {"dir": "runs/shots"}
    assert base["data"] == {
        "source": "csv",
        "captions": str(folder.resolve() / "captions.csv"),
        "image_dir": str(folder.resolve()),
    }
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "images" / "a.png").write_bytes((folder / "red_000.png").read_bytes())
    document = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"image_id": 1, "caption": "a red square"}],
    }
    (coco / "captions.json").write_text(json.dumps(document))
    data = caption_folder_config(coco, [], tmp_path / "cache")["data"]
    assert data["source"] == "coco" and data["image_dir"] == str(coco.resolve() / "images")
    (folder / "more.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds one captions file .* found captions.csv, more.json"):
        caption_folder_config(folder, [], tmp_path / "cache")


def test_offline_an_uncached_encoder_fails_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = csv_folder(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))
    assert main(["-q", "caption", "run", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"model.encoder: {ENCODER!r} is not in the local Hugging Face cache" in err and "fewclip/world-clip" in err
    assert not (tmp_path / "runs").exists()
