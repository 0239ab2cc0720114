"""fewclip.data: the folder, CSV and Hugging Face sources, robust image reading, and the prepare stage."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewclip.data.images import UnreadableImage, read_image
from fewclip.data.records import read_records
from fewclip.fileio import read_csv, read_json
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, prepare

# --- helpers -------------------------------------------------------------------------------------


def _colour(class_index: int, i: int, shift: int = 0) -> tuple[int, int, int]:
    """A distinct solid colour per (class, image), so every image has its own bytes."""
    return (40 * class_index + 10, (7 * i + shift) % 256, 200 - 3 * i)


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _noise(seed: int, fmt: str) -> bytes:
    """A noisy 32x32 image, so that its encoding is long enough to cut in the middle of the pixel data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return _png_bytes(Image.fromarray(pixels), fmt)


def make_folder(root: Path, counts: dict[str, dict[str, int]] | dict[str, int]) -> Path:
    """``{"train": {"a": 3}, "test": {"a": 2}}`` -> root/train/a/NNNN.png ...; ``{"a": 3}`` -> root/a/NNNN.png."""
    splits = counts if all(isinstance(v, dict) for v in counts.values()) else {"": counts}
    for split, classes in splits.items():
        for class_index, (name, n) in enumerate(sorted(classes.items())):  # type: ignore[union-attr]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (16, 16), _colour(class_index, i, shift=len(split))).save(folder / f"{i:04d}.png")
    return root


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def layout_of(config) -> RunLayout:
    return RunLayout(Path(config.output.dir))


def snapshot(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


SMALL = ("few_shot.shots=[1]", "splits.val_per_class=1")  # two train images per class are enough


# --- folder source -------------------------------------------------------------------------------


def test_folder_with_split_subfolders(make_config, shapes_dir: Path) -> None:
    rename = {"red_circle": "crimson disc"}
    config = make_config(dataset={"source": "folder", "path": str(shapes_dir), "rename": rename})
    classes = prepare(RunContext(config))
    layout = layout_of(config)

    raw = sorted(p.name for p in (shapes_dir / "train").iterdir())
    readable = [rename.get(name, name.replace("_", " ")) for name in raw]
    assert read_json(layout.classes) == {"raw": raw, "readable": readable}
    assert classes.readable == readable
    assert "green square" in readable

    for split, csv_path in (("train", layout.train_full), ("test", layout.test)):
        records = read_records(csv_path)
        expected_files = {str(p.resolve()) for p in (shapes_dir / split).glob("*/*.png")}
        assert {r.path for r in records} == expected_files
        assert len(records) == len(expected_files)
        expected_count = 12 if split == "train" else 6
        assert Counter(r.class_name for r in records) == {name: expected_count for name in readable}
        for record in records:
            assert Path(record.path).parent.name == raw[record.label]
            assert record.class_name == readable[record.label]
            assert record.sha1 == sha1_of(Path(record.path))
    assert read_csv(layout.exclusions) == []


def test_folder_class_selection_keeps_the_listed_order(make_config, shapes_dir: Path) -> None:
    selected = ["red_circle", "blue_triangle"]
    config = make_config(dataset={"source": "folder", "path": str(shapes_dir), "classes": selected})
    prepare(RunContext(config))
    layout = layout_of(config)
    assert read_json(layout.classes)["raw"] == selected
    records = read_records(layout.train_full)
    assert {(r.label, Path(r.path).parent.name) for r in records} == {(0, "red_circle"), (1, "blue_triangle")}


def test_folder_max_per_class_caps_in_file_order(make_config, shapes_dir: Path) -> None:
    config = make_config(
        *SMALL, dataset={"source": "folder", "path": str(shapes_dir), "max_train_per_class": 5, "max_test_per_class": 3}
    )
    prepare(RunContext(config))
    train = read_records(layout_of(config).train_full)
    test = read_records(layout_of(config).test)
    assert Counter(r.label for r in train) == {0: 5, 1: 5, 2: 5}
    assert Counter(r.label for r in test) == {0: 3, 1: 3, 2: 3}
    assert sorted(Path(r.path).name for r in train if r.label == 0) == [f"{i:04d}.png" for i in range(5)]


def test_folder_without_split_subfolders_holds_out_deterministically(make_config, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "flat", {"cat_a": 20, "dog_b": 20})
    dataset = {"source": "folder", "path": str(data), "test_fraction": 0.3}
    first = make_config(*SMALL, f"output.dir={tmp_path / 'run1'}", dataset=dataset)
    second = make_config(*SMALL, f"output.dir={tmp_path / 'run2'}", dataset=dataset)
    prepare(RunContext(first))
    prepare(RunContext(second))
    a, b = layout_of(first), layout_of(second)
    assert a.train_full.read_bytes() == b.train_full.read_bytes()
    assert a.test.read_bytes() == b.test.read_bytes()

    train = {r.path for r in read_records(a.train_full)}
    test = {r.path for r in read_records(a.test)}
    assert not train & test
    assert train | test == {str(p.resolve()) for p in data.glob("*/*.png")}
    assert all({r.label for r in read_records(path)} == {0, 1} for path in (a.train_full, a.test))

    # the rule depends on the path inside the dataset, not on where the dataset lies
    moved = shutil.copytree(data, tmp_path / "elsewhere" / "flat")
    third = make_config(*SMALL, f"output.dir={tmp_path / 'run3'}", dataset={**dataset, "path": str(moved)})
    prepare(RunContext(third))
    relative_test = {Path(p).relative_to(data.resolve()).as_posix() for p in test}
    moved_test = {
        Path(r.path).relative_to(Path(moved).resolve()).as_posix() for r in read_records(layout_of(third).test)
    }
    assert moved_test == relative_test


# --- CSV source ----------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def _csv_dataset(root: Path, n_train: int = 3, n_test: int = 2) -> tuple[Path, Path]:
    """root/imgs/<class>_<split>_<i>.png with train.csv and test.csv listing them by relative path."""
    (root / "imgs").mkdir(parents=True)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for class_index, name in enumerate(["zebra", "apple_tree"]):
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                relative = f"imgs/{name}_{split}_{i}.png"
                Image.new("RGB", (16, 16), _colour(class_index, i, shift=len(split))).save(root / relative)
                rows[split].append((relative, name))
    return _write_csv(root / "train.csv", rows["train"]), _write_csv(root / "test.csv", rows["test"])


def test_csv_source_resolves_paths_against_the_csv_folder(make_config, tmp_path: Path) -> None:
    train_csv, test_csv = _csv_dataset(tmp_path / "csvdata")
    config = make_config(*SMALL, dataset={"source": "csv", "train": str(train_csv), "test": str(test_csv)})
    prepare(RunContext(config))
    layout = layout_of(config)
    assert read_json(layout.classes) == {"raw": ["apple_tree", "zebra"], "readable": ["apple tree", "zebra"]}
    for csv_path, table in ((layout.train_full, train_csv), (layout.test, test_csv)):
        records = read_records(csv_path)
        listed = {(str((table.parent / row["path"]).resolve()), row["label"]) for row in read_csv(table)}
        assert {(r.path, ["apple_tree", "zebra"][r.label]) for r in records} == listed
        assert all(r.sha1 == sha1_of(Path(r.path)) for r in records)


def test_csv_source_without_test_csv_holds_out(make_config, tmp_path: Path) -> None:
    train_csv, _ = _csv_dataset(tmp_path / "csvdata", n_train=12, n_test=0)
    config = make_config(*SMALL, dataset={"source": "csv", "train": str(train_csv), "test_fraction": 0.4})
    prepare(RunContext(config))
    train = {r.path for r in read_records(layout_of(config).train_full)}
    test = {r.path for r in read_records(layout_of(config).test)}
    assert not train & test
    assert train | test == {str((train_csv.parent / row["path"]).resolve()) for row in read_csv(train_csv)}


def test_csv_row_with_missing_file_names_path_and_line(make_config, tmp_path: Path) -> None:
    train_csv, test_csv = _csv_dataset(tmp_path / "csvdata")
    rows = [(r["path"], r["label"]) for r in read_csv(train_csv)]
    rows.insert(1, ("imgs/not_there.png", "zebra"))  # the second data row: line 3 of the file
    _write_csv(train_csv, rows)
    config = make_config(*SMALL, dataset={"source": "csv", "train": str(train_csv), "test": str(test_csv)})
    with pytest.raises(FileNotFoundError) as info:
        prepare(RunContext(config))
    message = str(info.value)
    assert str(train_csv.parent / "imgs" / "not_there.png") in message
    assert f"{train_csv}:3" in message
    assert not layout_of(config).train_full.exists()


def test_missing_csv_file_fails(make_config, tmp_path: Path) -> None:
    config = make_config(dataset={"source": "csv", "train": str(tmp_path / "nope.csv")})
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        prepare(RunContext(config))


def test_csv_missing_column_fails(make_config, tmp_path: Path) -> None:
    train_csv, _ = _csv_dataset(tmp_path / "csvdata")
    config = make_config(dataset={"source": "csv", "train": str(train_csv), "label_column": "class"})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['class'\]"):
        prepare(RunContext(config))


# --- Hugging Face datasets source ----------------------------------------------------------------

HF_NAMES = ["cat_face", "dog", "bird"]


def _hf_images(split: str, n: int, shift: int, fmt: str | None) -> tuple[list, list[int], list[tuple[int, int, int]]]:
    images, labels, colours = [], [], []
    for label in range(len(HF_NAMES)):
        for i in range(n):
            colour = _colour(label, i, shift=shift + (100 if split == "test" else 0))
            image = Image.new("RGB", (16, 16), colour)
            images.append(image if fmt is None else {"bytes": _png_bytes(image, fmt), "path": None})
            labels.append(label)
            colours.append(colour)
    return images, labels, colours


def build_hf_dataset(root: Path, n_train: int = 4, n_test: int = 2, shift: int = 0, fmt: str | None = None) -> dict:
    """A local parquet dataset that ``datasets.load_dataset(root)`` reads as train/test splits.

    Returns the colour of every row by split, in row order.
    """
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=HF_NAMES)})
    colours = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels, colours[split] = _hf_images(split, n, shift, fmt)
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        (root / "data").mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return colours


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the datasets library's Arrow cache inside the test's temporary folder."""
    import datasets

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def test_hf_source_exports_images_and_respects_class_filter(make_config, tmp_path: Path, hf_cache: Path) -> None:
    colours = build_hf_dataset(tmp_path / "ds")
    config = make_config(*SMALL, dataset={"source": "hf", "id": str(tmp_path / "ds"), "classes": ["dog", "cat_face"]})
    prepare(RunContext(config))
    layout = layout_of(config)
    assert read_json(layout.classes) == {"raw": ["dog", "cat_face"], "readable": ["dog", "cat face"]}

    for split, csv_path, n in (("train", layout.train_full, 4), ("test", layout.test, 2)):
        records = read_records(csv_path)
        assert Counter(r.class_name for r in records) == {"dog": n, "cat face": n}
        # rows of the source, in order, for the kept classes: dog = source label 1, cat_face = source label 0
        expected = {0: colours[split][n : 2 * n], 1: colours[split][:n]}
        for label in (0, 1):
            files = [layout.data / r.path for r in records if r.label == label]
            assert all(not Path(r.path).is_absolute() for r in records)
            assert all(f.resolve().is_relative_to((layout.data / "images" / split).resolve()) for f in files)
            assert [read_image(f).getpixel((0, 0)) for f in files] == expected[label]
        for record in records:
            assert record.sha1 == sha1_of(layout.data / record.path)
    assert hf_cache.is_dir()  # the isolated cache was the one used


def test_hf_reprepare_with_other_data_rewrites_same_size_files(make_config, tmp_path: Path, hf_cache: Path) -> None:
    """BMPs of one size have one length: a changed image must still replace the exported file."""
    build_hf_dataset(tmp_path / "ds1", fmt="BMP")
    build_hf_dataset(tmp_path / "ds2", fmt="BMP", shift=50)
    for ds in ("ds1", "ds2"):
        config = make_config(*SMALL, dataset={"source": "hf", "id": str(tmp_path / ds)})
        prepare(RunContext(config))
    layout = layout_of(config)
    records = read_records(layout.train_full) + read_records(layout.test)
    assert len(records) == 18
    assert all(r.path.endswith(".bmp") for r in records)
    assert [r.sha1 for r in records] == [sha1_of(layout.data / r.path) for r in records]


def test_hf_unknown_class_is_reported(make_config, tmp_path: Path, hf_cache: Path) -> None:
    build_hf_dataset(tmp_path / "ds")
    config = make_config(*SMALL, dataset={"source": "hf", "id": str(tmp_path / "ds"), "classes": ["dgo"]})
    with pytest.raises(ValueError, match=r"unknown class 'dgo' \(did you mean 'dog'\?\)"):
        prepare(RunContext(config))


# --- images of every mode --------------------------------------------------------------------------


def _mode_images(folder: Path) -> dict[str, tuple[Path, dict[tuple[int, int], tuple[int, int, int]]]]:
    """One file per awkward mode, with the RGB each listed pixel must read as."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    gray = Image.new("L", (2, 1))
    gray.putdata([0, 100])
    gray.save(folder / "gray.png")
    files["L"] = (folder / "gray.png", {(0, 0): (0, 0, 0), (1, 0): (100, 100, 100)})

    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    rgba.save(folder / "rgba.png")
    half = round(255 * (1 - 128 / 255))  # black at alpha 128 over white
    files["RGBA"] = (folder / "rgba.png", {(0, 0): (255, 255, 255), (1, 0): (0, 0, 255), (2, 0): (half, half, half)})

    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    palette.putdata([0, 1])
    palette.save(folder / "palette.png")
    files["P"] = (folder / "palette.png", {(0, 0): (10, 20, 30), (1, 0): (200, 100, 50)})

    palette.save(folder / "palette_transparent.png", transparency=0)
    files["P+transparency"] = (folder / "palette_transparent.png", {(0, 0): (255, 255, 255), (1, 0): (200, 100, 50)})

    Image.new("CMYK", (2, 1), (255, 0, 0, 0)).save(folder / "cmyk.tif")
    files["CMYK"] = (folder / "cmyk.tif", {(0, 0): (0, 255, 255)})

    deep = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert deep.mode == "I;16"
    deep.save(folder / "deep.png")
    mid = round(32768 * 255 / 65535)
    files["I;16"] = (folder / "deep.png", {(0, 0): (0, 0, 0), (1, 0): (mid, mid, mid), (2, 0): (255, 255, 255)})
    return files


def test_read_image_converts_every_mode_to_rgb(tmp_path: Path) -> None:
    for mode, (path, pixels) in _mode_images(tmp_path).items():
        with Image.open(path) as original:
            assert original.mode == ("P" if mode.startswith("P") else mode)
        image = read_image(path)
        assert image.mode == "RGB", mode
        for xy, rgb in pixels.items():
            assert image.getpixel(xy) == pytest.approx(rgb, abs=1), (mode, xy)


def test_prepare_keeps_images_of_every_mode(make_config, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "modes", {"train": {"plain": 4, "odd": 0}, "test": {"plain": 1, "odd": 1}})
    files = _mode_images(root / "train" / "odd")
    config = make_config(*SMALL, dataset={"source": "folder", "path": str(root)})
    prepare(RunContext(config))
    train = read_records(layout_of(config).train_full)
    assert {Path(r.path).name for r in train if r.class_name == "odd"} == {p.name for p, _ in files.values()}
    assert read_csv(layout_of(config).exclusions) == []


# --- bad input -----------------------------------------------------------------------------------


def test_unreadable_images_are_skipped_and_listed(make_config, tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path / "bad", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    png, jpeg = _noise(0, "PNG"), _noise(1, "JPEG")
    bad = {
        root / "train" / "a" / "corrupt.png": b"this is not an image",
        root / "train" / "a" / "truncated.png": png[: len(png) // 2],
        root / "train" / "b" / "truncated.jpg": jpeg[:-2],  # no end-of-image marker
        root / "test" / "b" / "corrupt.jpeg": b"\xff\xd8\xff" + b"\0" * 20,
    }
    for path, data in bad.items():
        path.write_bytes(data)
    for path in bad:
        with pytest.raises(UnreadableImage, match=str(path)):
            read_image(path)

    config = make_config(*SMALL, dataset={"source": "folder", "path": str(root)})
    with caplog.at_level(logging.WARNING, logger="fewclip"):
        prepare(RunContext(config))
    layout = layout_of(config)
    excluded = {(row["split"], row["image"]) for row in read_csv(layout.exclusions)}
    assert excluded == {(path.parts[-3], str(path)) for path in bad}
    assert all(row["reason"] for row in read_csv(layout.exclusions))
    kept = read_records(layout.train_full) + read_records(layout.test)
    assert len(kept) == 8
    assert not {r.path for r in kept} & {str(p.resolve()) for p in bad}
    warned = "\n".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    for path in bad:
        assert str(path) in warned


def test_unknown_class_names_it_and_a_suggestion(make_config, shapes_dir: Path) -> None:
    config = make_config(dataset={"source": "folder", "path": str(shapes_dir), "classes": ["red_circel"]})
    with pytest.raises(ValueError) as info:
        prepare(RunContext(config))
    assert "'red_circel'" in str(info.value)
    assert "did you mean 'red_circle'" in str(info.value)


def test_rename_of_unselected_class_fails(make_config, shapes_dir: Path) -> None:
    config = make_config(
        dataset={
            "source": "folder",
            "path": str(shapes_dir),
            "classes": ["red_circle"],
            "rename": {"blue_triangle": "blue wedge"},
        }
    )
    with pytest.raises(ValueError, match=r"dataset\.rename: \['blue_triangle'\]"):
        prepare(RunContext(config))


@pytest.mark.parametrize("only_corrupt", [False, True], ids=["empty-folder", "only-unreadable-images"])
def test_class_without_images_fails_naming_it(make_config, tmp_path: Path, only_corrupt: bool) -> None:
    root = make_folder(tmp_path / "gaps", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    (root / "train" / "hollow").mkdir()
    (root / "test" / "hollow").mkdir()
    if only_corrupt:
        (root / "train" / "hollow" / "x.png").write_bytes(b"junk")
    config = make_config(*SMALL, dataset={"source": "folder", "path": str(root)})
    with pytest.raises(ValueError, match=r"class\(es\) \['hollow'\] have no readable train images"):
        prepare(RunContext(config))
    assert not layout_of(config).train_full.exists()
    assert not layout_of(config).classes.exists()


def test_too_many_shots_names_each_class_and_its_count(make_config) -> None:
    config = make_config("few_shot.shots=[50]")
    with pytest.raises(ValueError) as info:
        prepare(RunContext(config))
    message = str(info.value)
    for name in ("red_circle", "green_square", "blue_triangle"):  # raw names, as dataset.classes spells them
        assert f"'{name}' has 12" in message
    assert "few_shot.allow_fewer" in message
    assert not layout_of(config).split_dir(1, 50).exists()


def test_allow_fewer_caps_short_classes(make_config) -> None:
    config = make_config("few_shot.shots=[4,50]", "few_shot.allow_fewer=true")
    prepare(RunContext(config))
    layout = layout_of(config)
    train = read_records(layout.split_dir(1, 50) / "train.csv")
    val = read_records(layout.split_dir(1, 50) / "val.csv")
    assert Counter(r.label for r in train) == {0: 10, 1: 10, 2: 10}  # 12 train images - 2 for validation
    assert Counter(r.label for r in val) == {0: 2, 1: 2, 2: 2}
    assert Counter(r.label for r in read_records(layout.split_dir(1, 4) / "train.csv")) == {0: 4, 1: 4, 2: 4}


def test_failed_prepare_keeps_earlier_outputs(make_config) -> None:
    good = make_config()
    prepare(RunContext(good))
    layout = layout_of(good)
    kept = [layout.train_full, layout.test, layout.classes, *sorted((layout.root / "splits").rglob("*.csv"))]
    before = snapshot(kept)
    with pytest.raises(ValueError, match="few_shot.shots"):
        prepare(RunContext(make_config("few_shot.shots=[50]")))
    assert snapshot(kept) == before
    assert not layout.split_dir(1, 50).exists()


def test_failure_in_test_split_keeps_earlier_train_full(make_config, tmp_path: Path) -> None:
    """A bad test split must not leave a new train_full.csv beside the old test.csv and classes.json."""
    train_csv, test_csv = _csv_dataset(tmp_path / "csvdata")
    dataset = {"source": "csv", "train": str(train_csv), "test": str(test_csv)}
    config = make_config(*SMALL, dataset=dataset)
    prepare(RunContext(config))
    layout = layout_of(config)
    before = snapshot([layout.train_full, layout.test, layout.classes])

    train_rows = [(r["path"], r["label"]) for r in read_csv(train_csv)]
    _write_csv(train_csv, train_rows[:-1])  # a different train split ...
    _write_csv(test_csv, [(r["path"], r["label"]) for r in read_csv(test_csv)] + [("imgs/gone.png", "zebra")])
    with pytest.raises(FileNotFoundError, match="gone.png"):  # ... and a test split that fails
        prepare(RunContext(config))
    assert snapshot([layout.train_full, layout.test, layout.classes]) == before


def test_script_dataset_fails_with_advice(make_config, tmp_path: Path, hf_cache: Path) -> None:
    """datasets 4+ refuses dataset scripts (RuntimeError); the error names the dataset and what to use instead."""
    folder = tmp_path / "scripted"
    folder.mkdir()
    (folder / "scripted.py").write_text("import datasets\n")  # a loading script, as frgfm/imagenette ships
    config = make_config(*SMALL, dataset={"source": "hf", "id": str(folder)})
    with pytest.raises(ValueError) as err:
        prepare(RunContext(config))
    message = str(err.value)
    assert message.startswith(f"dataset.id: {folder} is a script-based dataset, which datasets ")
    assert "Dataset scripts are no longer supported" in message  # the library's own words, kept
    assert "parquet" in message and "dataset.source: folder" in message
