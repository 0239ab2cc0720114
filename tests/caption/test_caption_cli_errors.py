"""Bad caption files through ``fewclip caption``: exit code 2, the data module's message naming the file and
entry, and nothing the run computed before is lost; unreadable images are skipped and listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewclip.runner.layout import CaptionLayout
from fewclip.caption.tiny import toy_caption_images
from fewclip.runner.cli import main
from fewclip.fileio import read_csv


def coco_set(folder: Path) -> tuple[Path, dict]:
    """16 toy images (4 colours x 4) in COCO format, two captions each."""
    pairs = toy_caption_images(folder / "images", per_colour=4, seed=1)
    images = [{"id": i, "file_name": path.name} for i, (path, _) in enumerate(pairs)]
    annotations = [
        {"id": 2 * i + k, "image_id": i, "caption": text if k == 0 else f"{text} on grey"}
        for i, (_, text) in enumerate(pairs)
        for k in range(2)
    ]
    data = {"images": images, "annotations": annotations}
    captions = folder / "captions.json"
    captions.write_text(json.dumps(data), encoding="utf-8")
    return captions, data


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".fewclip-run.lock"
    }


def broken(data: dict, how: str) -> object:
    data = json.loads(json.dumps(data))
    if how == "missing image":
        data["annotations"][3]["image_id"] = 99
    elif how == "uncaptioned image":
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 5]
    elif how == "empty caption":
        data["annotations"][4]["caption"] = " \n "
    elif how == "missing file":
        data["images"][2]["file_name"] = "nowhere.png"
    elif how == "not coco":
        return [{"image": "a.png", "caption": "a red square"}]
    return data


EXPECTED = {
    "missing image": ["annotations[3]", "points to image_id 99, which is not in 'images'"],
    "uncaptioned image": ["1 image(s) have no caption", "images[5] (id 5"],
    "empty caption": ["annotations[4] (image_id 2): empty caption"],
    "missing file": ["1 image file(s) do not exist", "images[2] (id 2)", "nowhere.png"],
    "not coco": ["not a COCO caption file: the top level is a list"],
}


@pytest.mark.slow
def test_bad_caption_files_fail_with_the_entry_and_lose_nothing(
    world_caption_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captions, good = coco_set(tmp_path / "coco")
    config = world_caption_config(
        "methods=[adapter]",
        "training.epochs=1",
        data={
            "source": "coco",
            "captions": str(captions),
            "image_dir": str(tmp_path / "coco" / "images"),
            "val_fraction": 0.2,
            "test_fraction": 0.25,
        },
    )
    config_file = tmp_path / "caption.yaml"
    config_file.write_text(config.to_yaml(), encoding="utf-8")
    assert main(["-q", "caption", "run", str(config_file)]) == 0
    layout = CaptionLayout(tmp_path / "run")
    computed = snapshot(layout.root)
    assert layout.summary.is_file() and len(read_csv(layout.summary)) == 4
    capsys.readouterr()
    for how, pieces in EXPECTED.items():
        captions.write_text(json.dumps(broken(good, how)), encoding="utf-8")
        for command in ("run", "prepare"):
            assert main(["-q", "caption", command, str(config_file)]) == 2, how
            err = capsys.readouterr().err
            assert err.startswith(f"fewclip: error: {captions}"), (how, err)
            assert all(piece in err for piece in pieces), (how, err)
            assert snapshot(layout.root) == computed, how  # the splits, models and results are untouched
    captions.write_text(json.dumps(good), encoding="utf-8")  # fixed: the run is complete as it was
    assert main(["-q", "caption", "run", str(config_file)]) == 0
    assert snapshot(layout.root) == computed


def test_unreadable_images_are_skipped_and_listed(world_caption_config, tmp_path: Path) -> None:
    captions, _ = coco_set(tmp_path / "coco")
    (tmp_path / "coco" / "images" / "red_001.png").write_bytes(b"not a png")
    config = world_caption_config(
        data={"source": "coco", "captions": str(captions), "image_dir": str(tmp_path / "coco" / "images")}
    )
    config_file = tmp_path / "caption.yaml"
    config_file.write_text(config.to_yaml(), encoding="utf-8")
    assert main(["-q", "caption", "prepare", str(config_file)]) == 0
    layout = CaptionLayout(tmp_path / "run")
    skipped = read_csv(layout.skipped)
    assert len(skipped) == 1 and skipped[0]["image"] == f"{captions}: images[4] (id 4)"  # red_001: colour-major order
    assert "cannot decode image" in skipped[0]["reason"]
    listed = [
        image["file_name"]
        for split in ("train", "val", "test")
        for image in json.loads(layout.split_file(split).read_text())["images"]
    ]
    assert len(listed) == 15 and not any(name.endswith("red_001.png") for name in listed)


def test_a_run_dir_of_another_config_is_refused(
    world_caption_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "caption.yaml"
    config_file.write_text(world_caption_config().to_yaml(), encoding="utf-8")
    assert main(["-q", "caption", "prepare", str(config_file)]) == 0
    assert main(["-q", "caption", "prepare", str(config_file), "data.world_images=40"]) == 2
    err = capsys.readouterr().err
    assert "holds a caption run of a different config" in err and "data.world_images: 30 -> 40" in err
    assert main(["-q", "caption", "prepare", str(config_file), "training.epochs=5"]) == 0  # not run-defining
    assert main(["-q", "caption", "prepare", str(config_file), "data.world_images=40", "--force"]) == 0
    assert len(read_csv(tmp_path / "run" / "data" / "skipped.csv")) == 0
    assert (
        sum(
            len(json.loads((tmp_path / "run" / "data" / f"{s}.json").read_text())["images"])
            for s in ("train", "val", "test")
        )
        == 40
    )


def test_a_folder_that_is_not_a_run_is_refused(
    world_caption_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    config_file = tmp_path / "caption.yaml"
    config_file.write_text(world_caption_config().to_yaml(), encoding="utf-8")
    assert main(["-q", "caption", "run", str(config_file)]) == 2
    assert "is not empty (notes.txt) and is not a fewclip run directory" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_a_missing_decoder_fails_before_the_run_dir_is_touched(
    world_caption_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "caption.yaml"
    config_file.write_text(world_caption_config().to_yaml(), encoding="utf-8")
    assert main(["-q", "caption", "run", str(config_file), f"model.decoder={tmp_path / 'no' / 'decoder'}"]) == 2
    err = capsys.readouterr().err
    assert f"model.decoder: model folder {tmp_path / 'no' / 'decoder'} does not exist" in err
    assert not (tmp_path / "run").exists()
