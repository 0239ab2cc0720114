"""Caption data: COCO / CSV / HF / world loaders, their errors, skipped images, splits by image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from fewclip.caption.data import (
    CaptionDataConfig,
    CaptionItem,
    clean_caption,
    load_caption_data,
    load_coco,
    load_csv,
    load_hf,
    split_by_image,
)


def _image(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _coco(tmp_path: Path, images: list, annotations: list, name: str = "captions.json") -> Path:
    file = tmp_path / name
    file.write_text(json.dumps({"images": images, "annotations": annotations}))
    return file


def _coco_set(tmp_path: Path, n: int = 12, per_image: int = 3) -> Path:
    images, annotations = [], []
    for i in range(n):
        _image(tmp_path / "img" / f"{i}.png", (i * 20 % 256, 40, 200 - i * 10))
        images.append({"id": 100 + i, "file_name": f"{i}.png"})
        annotations += [
            {"id": len(annotations), "image_id": 100 + i, "caption": f"image {i} caption {k}"} for k in range(per_image)
        ]
    return _coco(tmp_path, images, annotations)


def test_clean_caption_collapses_whitespace_and_refuses_empty() -> None:
    assert (
        clean_caption("  a red\n\tcircle   in  the  corner \r\n", "f.json: annotations[0]")
        == "a red circle in the corner"
    )
    with pytest.raises(ValueError, match=r"f\.json: annotations\[3\]: empty caption \(' \\n '\)"):
        clean_caption(" \n ", "f.json: annotations[3]")
    with pytest.raises(ValueError, match="the caption is NoneType None, not text"):
        clean_caption(None, "x")


def test_load_coco_groups_references_and_cleans_them(tmp_path: Path) -> None:
    loaded = load_coco(_coco_set(tmp_path, n=4), tmp_path / "img")
    assert [item.image_id for item in loaded.items] == ["100", "101", "102", "103"]
    assert loaded.items[2].captions == ("image 2 caption 0", "image 2 caption 1", "image 2 caption 2")
    assert loaded.items[2].path == tmp_path / "img" / "2.png" and loaded.items[2].sha1 is not None
    assert loaded.skipped == []


@pytest.mark.parametrize(
    "images, annotations, pieces",
    [
        (
            [{"id": 1, "file_name": "0.png"}],
            [{"image_id": 2, "caption": "a dog"}],
            ["annotations[0]", "'a dog'", "image_id 2", "not in 'images'", "add the image or remove the caption"],
        ),
        (
            [{"id": 1, "file_name": "0.png"}, {"id": 2, "file_name": "1.png"}],
            [{"image_id": 1, "caption": "a dog"}],
            ["1 image(s) have no caption", "images[1] (id 2, file_name '1.png')", "Add captions"],
        ),
        (
            [{"id": 1, "file_name": "0.png"}],
            [{"image_id": 1, "caption": "  \n"}],
            ["annotations[0] (image_id 1): empty caption", "write the caption or remove the entry"],
        ),
        (
            [{"id": 1, "file_name": "0.png"}],
            [{"image_id": 1, "text": "a dog"}],
            ["annotations[0] has no 'caption' key", "found ['image_id', 'text']", "expected COCO caption format"],
        ),
        ([{"id": 1, "file": "0.png"}], [{"image_id": 1, "caption": "a dog"}], ["images[0] has no 'file_name' key"]),
        (
            [{"id": 1, "file_name": "0.png"}, {"id": 2, "file_name": "0.png"}],
            [],
            ["images[1] (id 2) names file '0.png' as images[0] does"],
        ),
        (
            [{"id": 1, "file_name": "0.png"}, {"id": 1, "file_name": "1.png"}],
            [],
            ["images[1] repeats id 1 of images[0]"],
        ),
    ],
)
def test_bad_coco_entries_name_file_and_entry(
    tmp_path: Path, images: list, annotations: list, pieces: list[str]
) -> None:
    _image(tmp_path / "img" / "0.png", (1, 2, 3))
    _image(tmp_path / "img" / "1.png", (4, 5, 6))
    file = _coco(tmp_path, images, annotations)
    with pytest.raises(ValueError) as err:
        load_coco(file, tmp_path / "img")
    message = str(err.value)
    assert message.startswith(str(file)) and all(piece in message for piece in pieces), message


@pytest.mark.parametrize(
    "content, pieces",
    [
        ({"images": []}, ["not a COCO caption file: no 'annotations' key", "top-level keys: ['images']"]),
        ({"annotations": []}, ["no 'images' key"]),
        ([1, 2], ["the top level is a list, not an object"]),
        ({"images": {}, "annotations": []}, ["'images' must be a list, got dict"]),
    ],
)
def test_json_that_is_not_coco_says_which_key_is_missing(tmp_path: Path, content: object, pieces: list[str]) -> None:
    file = tmp_path / "not_coco.json"
    file.write_text(json.dumps(content))
    with pytest.raises(ValueError) as err:
        load_coco(file, tmp_path)
    assert all(piece in str(err.value) for piece in pieces) and str(file) in str(err.value), str(err.value)


def test_invalid_json_names_line_and_missing_image_files_are_listed(tmp_path: Path) -> None:
    file = tmp_path / "broken.json"
    file.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON \(line 2, column"):
        load_coco(file, tmp_path)
    file = _coco(tmp_path, [{"id": 7, "file_name": "gone.png"}], [{"image_id": 7, "caption": "x"}])
    with pytest.raises(ValueError) as err:
        load_coco(file, tmp_path / "img")
    assert "1 image file(s) do not exist" in str(err.value)
    assert f"images[0] (id 7): {tmp_path / 'img' / 'gone.png'}" in str(err.value)


def test_unreadable_images_are_skipped_and_listed(tmp_path: Path) -> None:
    file = _coco_set(tmp_path, n=5)
    (tmp_path / "img" / "1.png").write_bytes(b"not an image at all")
    png = (tmp_path / "img" / "2.png").read_bytes()
    (tmp_path / "img" / "2.png").write_bytes(png[: len(png) // 2])  # truncated
    loaded = load_coco(file, tmp_path / "img")
    assert [item.image_id for item in loaded.items] == ["100", "103", "104"]
    assert [s.image_id for s in loaded.skipped] == ["101", "102"]
    assert "images[1] (id 101)" in loaded.skipped[0].where
    assert "not a recognised image format" in loaded.skipped[0].reason
    data = load_caption_data(
        CaptionDataConfig(
            source="coco", captions=str(file), image_dir=str(tmp_path / "img"), val_fraction=0.25, test_fraction=0.25
        ),
        tmp_path / "run",
    )
    assert [(s.image_id, s.where) for s in data.skipped] == [
        (i, f"{file}: images[{k}] (id {i})") for k, i in ((1, "101"), (2, "102"))
    ]
    assert sorted(i.image_id for s in (data.train, data.val, data.test) for i in s) == ["100", "103", "104"]


def test_load_csv_groups_rows_of_one_image_and_names_lines(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", (9, 9, 9))
    _image(tmp_path / "sub" / "b.png", (200, 9, 9))
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text('path,caption\na.png,a grey square\nsub/b.png,"a red\nsquare"\na.png,  grey  box \n')
    loaded = load_csv(csv_file)
    assert {i.image_id: i.captions for i in loaded.items} == {
        "a.png": ("a grey square", "grey box"),
        "sub/b.png": ("a red square",),
    }
    csv_file.write_text("path,caption\na.png,ok\nsub/b.png,   \n")
    with pytest.raises(ValueError, match=r"caps\.csv:3 \(sub/b\.png\): empty caption"):
        load_csv(csv_file)
    csv_file.write_text("path,caption\na.png,ok\nmissing.png,a thing\n")
    with pytest.raises(ValueError, match=r"caps\.csv:3: .*missing\.png"):
        load_csv(csv_file)
    csv_file.write_text("image,text\na.png,ok\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['path', 'caption'\]; found \['image', 'text'\]"):
        load_csv(csv_file)


def _items(n: int) -> list[CaptionItem]:
    return [
        CaptionItem(f"img{i:03d}", Path(f"{i}.png"), (f"caption {i} a", f"caption {i} b"), sha1=f"{i:040x}")
        for i in range(n)
    ]


def test_split_is_deterministic_exact_in_size_and_keeps_references_together() -> None:
    items = _items(200)
    train, val, test = split_by_image(items, 0.15, 0.2, seed=3)
    assert (len(train), len(val), len(test)) == (130, 30, 40)
    assert split_by_image(list(reversed(items)), 0.15, 0.2, seed=3) == (train, val, test)  # order-free
    assert split_by_image(items, 0.15, 0.2, seed=4)[2] != test  # the seed matters
    assert [len(s) for s in split_by_image(items[:3], 0.15, 0.2, seed=0)] == [1, 1, 1]  # a tiny set still has val
    assert [len(s) for s in split_by_image(items[:10], 0.0, 0.2, seed=0)] == [8, 0, 2]
    ids = [{i.image_id for i in split} for split in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    captions = [{c for i in split for c in i.captions} for split in (train, val, test)]
    assert not (captions[0] & captions[1] or captions[0] & captions[2] or captions[1] & captions[2])
    # the same picture under a second id goes where the first one goes
    duplicate = [*items, CaptionItem("copy", Path("copy.png"), ("c",), sha1=items[0].sha1)]
    splits = split_by_image(duplicate, 0.15, 0.2, seed=3)
    holding = [s for s in splits if any(i.image_id in ("copy", "img000") for i in s)]
    assert len(holding) == 1 and {"copy", "img000"} <= {i.image_id for i in holding[0]}  # same content, same split


def test_world_caption_data_splits_and_regenerates_only_when_changed(tmp_path: Path) -> None:
    cfg = CaptionDataConfig(world_images=40, world_captions_per_image=3, world_image_size=32)
    data = load_caption_data(cfg, tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (26, 6, 8) and data.skipped == []
    assert all(len(item.captions) == 3 and item.path.is_file() for item in data.train)
    captions_file = tmp_path / "world_captions" / "captions.json"
    stamp = captions_file.stat().st_mtime_ns
    assert load_caption_data(cfg, tmp_path) == data and captions_file.stat().st_mtime_ns == stamp
    again = load_caption_data(cfg.model_copy(update={"world_seed": 1}), tmp_path)
    assert again.train[0].captions != data.train[0].captions
    capped = load_caption_data(cfg.model_copy(update={"max_images": 20}), tmp_path)
    assert len(capped.train) + len(capped.val) + len(capped.test) == 20


def test_config_errors_name_the_source_and_keys() -> None:
    with pytest.raises(
        ValidationError,
        match=r"unknown caption data source 'cocoo' \(did you mean 'coco'\?\); "
        r"valid: world, coco, csv, hf",
    ):
        CaptionDataConfig(source="cocoo")
    with pytest.raises(ValidationError, match=r"source 'coco' needs captions and image_dir"):
        CaptionDataConfig(source="coco")
    with pytest.raises(ValidationError, match=r"source 'hf' needs id"):
        CaptionDataConfig(source="hf")
    with pytest.raises(ValidationError, match="leave no train images"):
        CaptionDataConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CaptionDataConfig(captions_file="x")  # type: ignore[call-arg]


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def _hf_dataset(root: Path, rows: list[tuple[object, object]]) -> Path:
    import io

    import datasets

    def cell(colour: object) -> dict:
        if isinstance(colour, bytes):
            return {"bytes": colour, "path": None}
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")  # type: ignore[arg-type]
        return {"bytes": buffer.getvalue(), "path": None}

    table = datasets.Dataset.from_dict(
        {"image": [cell(c) for c, _ in rows], "text": [t for _, t in rows]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def test_load_hf_merges_rows_of_one_image_and_skips_unreadable(tmp_path: Path, hf_cache: Path) -> None:
    root = _hf_dataset(
        tmp_path / "ds",
        [((255, 0, 0), "a red  square"), ((0, 0, 255), "blue"), ((255, 0, 0), "red\nagain"), (b"garbage", "broken")],
    )
    loaded = load_hf(str(root), "train", "image", "text", tmp_path / "out")
    assert sorted(item.captions for item in loaded.items) == [("a red square", "red again"), ("blue",)]
    assert all(item.path.parent == tmp_path / "out" / "images" and item.path.is_file() for item in loaded.items)
    assert [s.where for s in loaded.skipped] == [f"{root}[train][3]"]
    with pytest.raises(
        ValueError,
        match=r"caption data\.caption_column: column 'caption' not in .*columns: "
        r"\['image', 'text'\]",
    ):
        load_hf(str(root), "train", "image", "caption", tmp_path / "out")


def test_load_hf_names_the_row_of_an_empty_caption(tmp_path: Path, hf_cache: Path) -> None:
    root = _hf_dataset(tmp_path / "ds", [((255, 0, 0), "fine"), ((0, 0, 255), "   ")])
    with pytest.raises(ValueError, match=r"\[train\]\[1\]: empty caption"):
        load_hf(str(root), "train", "image", "text", tmp_path / "out")
