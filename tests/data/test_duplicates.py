"""Images that would leak or contradict: a train folder that is the test folder, one image (by the sha1 of its
bytes) in train and test, under two labels, or twice in one split; found by prepare, which reads every image once."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fewclip.data.prepare import load_prepared
from fewclip.data.sources.folder import FolderSource, FolderSourceConfig
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, prepare
from tests.data.csv_splits import csv_splits

SMALL = ("few_shot.shots=[1]", "splits.val_per_class=1", "methods=[linear_probe]")


def images(folder: Path, n: int, shade: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        Image.new("RGB", (16, 16), (shade, 10 * i, 100)).save(path)
    return paths


def split_folder(root: Path) -> Path:
    """root/{train,test}/{cat,dog}: 4 train and 2 test images per class, every image distinct."""
    for shade, name in ((0, "cat"), (120, "dog")):
        images(root / "train" / name, 4, shade)
        images(root / "test" / name, 2, shade + 60)
    return root


def folder_config(make_config, root: Path, *overrides: str, **keys: object):
    return make_config(*SMALL, *overrides, dataset={"source": "folder", "path": str(root), **keys})


def test_a_train_folder_that_is_the_test_folder_is_refused(tmp_path: Path) -> None:
    root = split_folder(tmp_path / "data")
    for train_dir in ("test", "./test", "."):
        with pytest.raises(ValueError) as info:
            FolderSource(FolderSourceConfig(path=str(root), train_dir=train_dir))
        message = str(info.value)
        assert f"dataset.train_dir {train_dir!r}" in message and "dataset.test_dir 'test'" in message
        assert "test images" in message and "two distinct folders" in message


def test_an_image_in_train_and_test_is_an_error_naming_both_copies(tmp_path: Path, make_config) -> None:
    root = split_folder(tmp_path / "data")
    leaked = root / "test" / "cat" / "from-train.png"
    shutil.copy(root / "train" / "cat" / "0002.png", leaked)
    config = folder_config(make_config, root)
    with pytest.raises(ValueError) as info:
        prepare(RunContext(config))
    message = str(info.value)
    assert "dataset: 1 image(s) are in both train and test" in message
    assert f"{root / 'train' / 'cat' / '0002.png'} (train, cat) = {leaked} (test, cat)" in message
    assert "dataset.duplicates" in message
    assert not RunLayout(Path(config.output.dir)).train_full.exists()  # nothing written


def test_one_image_under_two_labels_is_an_error(tmp_path: Path, make_config) -> None:
    root = split_folder(tmp_path / "data")
    twin = root / "train" / "dog" / "twin.png"
    shutil.copy(root / "train" / "cat" / "0001.png", twin)
    with pytest.raises(ValueError) as info:
        prepare(RunContext(folder_config(make_config, root, "dataset.duplicates=within_split")))
    message = str(info.value)
    assert "dataset: 1 image(s) appear under two labels" in message
    assert f"{root / 'train' / 'cat' / '0001.png'} (train, cat) = {twin} (train, dog)" in message


def test_a_csv_listing_one_path_under_two_labels_is_an_error(tmp_path: Path, make_config) -> None:
    root = split_folder(tmp_path / "data")
    config = make_config(*SMALL, dataset=csv_splits(root, ["train/cat/0003.png,dog"]))
    with pytest.raises(ValueError) as info:
        prepare(RunContext(config))
    message = str(info.value)
    assert "dataset: 1 image(s) appear under two labels" in message
    assert f"{root / 'train.csv'}:5 (train, cat) = {root / 'train.csv'}:10 (train, dog)" in message


def test_copies_within_train_are_an_error_unless_kept_which_the_log_says(
    tmp_path: Path, make_config, caplog: pytest.LogCaptureFixture
) -> None:
    root = split_folder(tmp_path / "data")
    for i, image in enumerate(images(root / "train" / "dog", 7, 30)):  # 7 more dogs, each filed twice
        shutil.copy(image, root / "train" / "dog" / f"copy{i}.png")
    with pytest.raises(ValueError) as info:
        prepare(RunContext(folder_config(make_config, root)))
    message = str(info.value)
    assert "dataset: 7 image(s) appear more than once in one split under one label (14 files" in message
    assert message.count("copy") == 5 and "... and 2 more" in message  # a few listed, the rest counted
    assert "dataset.duplicates: within_split" in message
    config = folder_config(make_config, root, "dataset.duplicates=within_split")
    with caplog.at_level(logging.WARNING, logger="fewclip"):
        prepare(RunContext(config))
    assert "7 image(s) appear more than once in one split under one label (14 files" in caplog.text
    assert "kept (dataset.duplicates: within_split)" in caplog.text
    _, train, _ = load_prepared(RunLayout(Path(config.output.dir)))
    assert len(train) == 4 + 7 + 7


def test_allow_keeps_a_leak_and_says_so(tmp_path: Path, make_config, caplog: pytest.LogCaptureFixture) -> None:
    root = split_folder(tmp_path / "data")
    shutil.copy(root / "train" / "cat" / "0002.png", root / "test" / "cat" / "from-train.png")
    config = folder_config(make_config, root, "dataset.duplicates=allow")
    with caplog.at_level(logging.WARNING, logger="fewclip"):
        prepare(RunContext(config))
    assert "1 image(s) are in both train and test" in caplog.text and "kept (dataset.duplicates: allow)" in caplog.text
    assert len(load_prepared(RunLayout(Path(config.output.dir)))[2]) == 5
