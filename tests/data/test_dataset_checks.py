"""Datasets that used to give a silently wrong experiment: a train/ + val/ layout, two folders with one
prompt name, a single class, and CSVs written by Excel (byte-order mark) or not in UTF-8."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from fewclip.data.prepare import load_prepared
from fewclip.data.sources.csv_source import CsvSource, CsvSourceConfig
from fewclip.data.sources.folder import FolderSource, FolderSourceConfig
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, prepare
from tests.data.csv_splits import csv_splits

SMALL = ("few_shot.shots=[1]", "splits.val_per_class=1")


def images(folder: Path, n: int, shade: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:04d}.png")
        Image.new("RGB", (16, 16), (shade, 10 * i, 100)).save(paths[-1])
    return paths


def test_train_and_val_folders_are_the_train_and_test_splits(
    tmp_path: Path, make_config, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "tv"
    for shade, name in ((0, "cat"), (120, "dog")):
        images(root / "train" / name, 3, shade)
        images(root / "val" / name, 2, shade + 60)
    config = make_config(*SMALL, "methods=[linear_probe]", dataset={"source": "folder", "path": str(root)})
    with caplog.at_level(logging.INFO, logger="fewclip"):
        prepare(RunContext(config))
    classes, train, test = load_prepared(RunLayout(Path(config.output.dir)))
    assert classes.raw == ["cat", "dog"]  # not ["train", "val"]
    assert sorted(Path(r.path).relative_to(root).parts[0] for r in train) == ["train"] * 6
    assert sorted(Path(r.path).relative_to(root).parts[0] for r in test) == ["val"] * 4
    assert f"{root} has train/ and val/ but no test/: using val/ as the test split" in caplog.text


def test_test_folder_wins_over_val(tmp_path: Path) -> None:
    root = tmp_path / "tvt"
    for split in ("train", "val", "test"):
        images(root / split / "a", 1, 0)
    source = FolderSource(FolderSourceConfig(path=str(root)))
    assert [item.path for item in source.items("test", ["a"])] == [root / "test" / "a" / "0000.png"]


def test_a_lone_train_folder_is_an_error_not_a_class(tmp_path: Path) -> None:
    root = tmp_path / "lone"
    images(root / "train" / "a", 2, 0)
    with pytest.raises(ValueError) as info:
        FolderSource(FolderSourceConfig(path=str(root)))
    assert f"dataset.path: {root} has a train/ folder but no test/ or val/ beside it" in str(info.value)
    assert f"point dataset.path at {root / 'train'}" in str(info.value)


def test_two_folders_with_one_readable_name_fail(tmp_path: Path, make_config) -> None:
    root = tmp_path / "twins"
    for shade, name in ((0, "red_circle"), (80, "red circle"), (160, "blue")):
        images(root / name, 6, shade)
    config = make_config(*SMALL, dataset={"source": "folder", "path": str(root)})
    with pytest.raises(ValueError) as info:
        prepare(RunContext(config))
    assert "dataset: classes ['red circle', 'red_circle'] all read as 'red circle' in prompts" in str(info.value)
    assert "dataset.rename" in str(info.value)
    renamed = make_config(*SMALL, dataset={"source": "folder", "path": str(root), "rename": {"red circle": "red ring"}})
    assert prepare(RunContext(renamed)).readable == ["blue", "red ring", "red circle"]


def test_one_class_fails(make_config, shapes_dir: Path) -> None:
    config = make_config(*SMALL, dataset={"source": "folder", "path": str(shapes_dir), "classes": ["red_circle"]})
    with pytest.raises(
        ValueError,
        match=r"dataset: need at least two classes, the dataset selection has 1 "
        r"\(\['red_circle'\]\)",
    ):
        prepare(RunContext(config))
    assert not (Path(config.output.dir) / "data" / "classes.json").exists()


def _csv_dataset(tmp_path: Path) -> tuple[Path, str]:
    for shade, name in ((0, "cat"), (120, "dog")):
        images(tmp_path / "img" / name, 5, shade)
    rows = "".join(f"img/{name}/{i:04d}.png,{name}\n" for name in ("cat", "dog") for i in range(5))
    return tmp_path / "labels.csv", "path,label\n" + rows


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path, text = _csv_dataset(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # what Excel's "CSV UTF-8" writes
    source = CsvSource(CsvSourceConfig(train=str(path)))
    assert source.class_names() == ["cat", "dog"]
    assert len(list(source.items("train", ["cat", "dog"]))) + len(list(source.items("test", ["cat", "dog"]))) == 10


def test_a_csv_not_in_utf8_names_the_file_line_and_byte(tmp_path: Path) -> None:
    path, text = _csv_dataset(tmp_path)
    path.write_bytes(text.replace("img/dog/0001.png,dog", "img/dog/0001.png,d\xf6g").encode("latin-1"))
    with pytest.raises(ValueError) as info:
        CsvSource(CsvSourceConfig(train=str(path)))
    assert str(info.value).startswith(f"{path}:8: not UTF-8 text (byte 0xf6); save the CSV as UTF-8")


def _fox_folder(root: Path) -> Path:
    """train/{cat,dog} and test/{cat,dog,fox}, 5 images each: fox has no train images."""
    for shade, name in ((0, "cat"), (120, "dog")):
        images(root / "train" / name, 5, shade)
    for shade, name in ((30, "cat"), (150, "dog"), (220, "fox")):
        images(root / "test" / name, 5, shade)
    return root


def test_test_images_of_a_class_absent_from_train_are_an_error(tmp_path: Path, make_config) -> None:
    root = _fox_folder(tmp_path / "fox")
    config = make_config(*SMALL, dataset={"source": "folder", "path": str(root)})
    with pytest.raises(ValueError) as info:
        prepare(RunContext(config))
    message = str(info.value)
    assert "dataset: 5 of the 15 test images belong to class(es) the train split lacks: 'fox' (5)" in message
    assert str(root / "test" / "fox" / "0000.png") in message
    assert "dataset.classes" in message
    assert not RunLayout(Path(config.output.dir)).test.exists()
    # listing the classes to keep leaves fox's test images out on purpose
    kept = make_config(*SMALL, dataset={"source": "folder", "path": str(root), "classes": ["cat", "dog"]})
    prepare(RunContext(kept))
    assert len(load_prepared(RunLayout(Path(kept.output.dir)))[2]) == 10


def test_a_csv_test_row_with_a_label_train_lacks_is_an_error_naming_the_row(tmp_path: Path, make_config) -> None:
    root = _fox_folder(tmp_path / "fox")
    config = make_config(*SMALL, dataset=csv_splits(root))
    with pytest.raises(ValueError) as info:
        prepare(RunContext(config))
    message = str(info.value)
    assert "5 of the 15 test images belong to class(es) the train split lacks: 'fox' (5)" in message
    assert f"{root / 'test.csv'}:12" in message  # the first fox row


def test_an_eval_on_target_keeps_the_classes_of_its_test_split(tmp_path: Path) -> None:
    from fewclip.data.prepare import prepare as prepare_data

    root = _fox_folder(tmp_path / "fox")
    layout = RunLayout(tmp_path / "target")
    classes = prepare_data(FolderSourceConfig(path=str(root)), layout, test_only=True)
    assert classes.raw == ["cat", "dog", "fox"] and len(load_prepared(layout)[2]) == 15


# --- messages that name the key and say what is wrong --------------------------------------------


def test_a_missing_eval_on_folder_is_named_by_its_own_key(tmp_path: Path, make_config, shapes_dir: Path) -> None:
    missing = tmp_path / "nowhere"
    config = make_config(
        *SMALL,
        dataset={
            "source": "folder",
            "path": str(shapes_dir),
            "eval_on": [{"source": "folder", "path": str(missing), "label": "other"}],
        },
    )
    with pytest.raises(FileNotFoundError) as info:
        prepare(RunContext(config))
    assert str(info.value).startswith(f"dataset.eval_on[0].path: folder {missing} does not exist")


def test_an_empty_csv_says_it_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        CsvSource(CsvSourceConfig(train=str(path)))
    assert str(info.value) == (
        f"dataset.train: {path} is empty (0 bytes); a CSV source needs a header line "
        "`path,label`, then one row per image"
    )


def test_a_csv_with_only_its_header_says_it_has_no_rows(tmp_path: Path) -> None:
    path, text = _csv_dataset(tmp_path)
    test_csv = tmp_path / "test.csv"
    path.write_text(text, encoding="utf-8")
    test_csv.write_text("path,label\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        CsvSource(CsvSourceConfig(train=str(path), test=str(test_csv)))
    assert str(info.value).startswith(
        f"dataset.test: {test_csv} has its header (path,label) but no rows; add one row per image"
    )


@pytest.mark.parametrize("below", [False, True])
def test_a_cache_dir_that_is_a_file_is_named(tmp_path: Path, make_config, below: bool) -> None:
    file = tmp_path / "cache-file"
    file.write_text("not a folder", encoding="utf-8")
    cache = file / "features" if below else file
    config = make_config(f"cache.dir={cache}")
    with pytest.raises(NotADirectoryError) as info:
        RunContext(config).cache
    assert str(info.value).startswith(f"cache.dir: {cache} {'lies under ' + str(file) if below else 'is a file'}")
