"""dataset.source: coop -- the 11 datasets in CoOp's layout, read from fake trees built as DATASETS.md says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewclip.runner.config import ConfigError, load_config
from fewclip.data.records import read_records
from fewclip.data.sources import build_source
from fewclip.data.sources.dassl_layouts import CoopSourceConfig
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import RunContext, prepare
from tests.data.coop_layout import ALL_NAMES, IMAGENET_CLASSES, JSON_LAYOUTS, build_coop_dataset, readable_classes


def coop_source(root: Path, name: str):
    return build_source(CoopSourceConfig(path=str(root), name=name))


def listed(source, split: str) -> list[tuple[Path, str]]:
    return [(item.path, item.class_name) for item in source.items(split, source.class_names())]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_reads_each_dataset_in_file_order_with_coop_class_names(tmp_path: Path, name: str) -> None:
    # Classes appear in the lists as 2, 0, 1 (ImageNet lists its folders sorted): order is kept.
    expected = build_coop_dataset(tmp_path, name, label_order=[2, 0, 1])
    source = coop_source(tmp_path, name)
    names = readable_classes(name)
    assert source.class_names() == names  # by label, with CoOp's fixes
    for split in ("train", "val", "test"):
        assert listed(source, split) == [(path, names[label]) for path, label in expected[split]], split
    if name == "ImageNet":
        assert listed(source, "val") == []  # CoOp's ImageNet has no val split (its val folder is the test split)
    else:
        assert len(listed(source, "val")) == 6


@pytest.mark.parametrize("name", ALL_NAMES)
def test_missing_layout_is_one_error_naming_every_expected_file(tmp_path: Path, name: str) -> None:
    if name in JSON_LAYOUTS:  # the split file, and the image folder its paths are relative to
        folder, image_dir, split_file = JSON_LAYOUTS[name]
        expected = [f"{folder}/{split_file}"] + ([f"{folder}/{image_dir}"] if image_dir else [])
    else:
        folder = {"ImageNet": "imagenet", "FGVCAircraft": "fgvc_aircraft"}[name]
        expected = {
            "ImageNet": ["imagenet/classnames.txt", "imagenet/images/train", "imagenet/images/val"],
            "FGVCAircraft": [
                "fgvc_aircraft/variants.txt",
                "fgvc_aircraft/images_variant_train.txt",
                "fgvc_aircraft/images_variant_val.txt",
                "fgvc_aircraft/images_variant_test.txt",
                "fgvc_aircraft/images",
            ],
        }[name]
    with pytest.raises(FileNotFoundError) as err:
        coop_source(tmp_path, name)
    message = str(err.value)
    assert f"dataset: {name} in CoOp's layout is missing" in message and "DATASETS.md" in message
    assert f"missing {len(expected)} file(s)" in message and f"holds {folder}/" in message
    for relative in expected:
        assert f"\n  {tmp_path / relative}" in message


def test_missing_files_are_named_together_when_some_exist(tmp_path: Path) -> None:
    (tmp_path / "fgvc_aircraft" / "images").mkdir(parents=True)
    (tmp_path / "fgvc_aircraft" / "variants.txt").write_text("A300B4\n")
    with pytest.raises(FileNotFoundError, match="missing 3 file") as err:
        coop_source(tmp_path, "FGVCAircraft")
    assert all(f"images_variant_{s}.txt" in str(err.value) for s in ("train", "val", "test"))
    assert "variants.txt\n" not in str(err.value).split("expects:")[1]


def test_dataset_folder_itself_is_accepted_as_path(tmp_path: Path) -> None:
    expected = build_coop_dataset(tmp_path, "DTD")
    source = coop_source(tmp_path / "dtd", "DTD")
    assert [path for path, _ in listed(source, "train")] == [path for path, _ in expected["train"]]


def test_unknown_dataset_name_suggests_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"dataset.name: unknown CoOp dataset 'Caltech-101' \(did you mean "
        r"'Caltech101'\?\); valid: ImageNet, Caltech101",
    ):
        load_config(None, base={"dataset": {"source": "coop", "path": str(tmp_path), "name": "Caltech-101"}})


def test_aircraft_variant_not_in_variants_txt_names_the_line(tmp_path: Path) -> None:
    build_coop_dataset(tmp_path, "FGVCAircraft")
    lists = tmp_path / "fgvc_aircraft" / "images_variant_val.txt"
    lists.write_text(lists.read_text() + "1234567 A300B5\n")
    with pytest.raises(ValueError, match=rf"{lists}:7: variant 'A300B5' is not in .*did you mean 'A300B4'"):
        coop_source(tmp_path, "FGVCAircraft")


def test_imagenet_folder_without_a_class_name_is_an_error(tmp_path: Path) -> None:
    build_coop_dataset(tmp_path, "ImageNet")
    for split in ("train", "val"):
        (tmp_path / "imagenet" / "images" / split / "n09999999").mkdir()
    with pytest.raises(ValueError, match=r"classnames.txt: no class name for folder\(s\) \['n09999999'\]"):
        coop_source(tmp_path, "ImageNet")
    assert list(IMAGENET_CLASSES.values()) == readable_classes("ImageNet")


def test_split_file_with_a_label_under_two_names_is_an_error(tmp_path: Path) -> None:
    build_coop_dataset(tmp_path, "OxfordPets")
    file = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    data = json.loads(file.read_text())
    data["test"][0][2] = "beagle"
    file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"test\[0\]: label 0 is 'beagle' here but 'alpha_one' elsewhere"):
        coop_source(tmp_path, "OxfordPets")


def test_prepare_exports_the_val_split_beside_train_and_test(tmp_path: Path, make_config) -> None:
    expected = build_coop_dataset(tmp_path / "DATA", "EuroSAT")
    config = make_config(
        "methods=[zero_shot]", dataset={"source": "coop", "path": str(tmp_path / "DATA"), "name": "EuroSAT"}
    )
    classes = prepare(RunContext(config))
    layout = RunLayout(Path(config.output.dir))
    assert classes.readable == ["Annual Crop Land", "Forest", "Sea or Lake"]
    for split, file in (("train", layout.train_full), ("val", layout.val_full), ("test", layout.test)):
        assert [(Path(r.path), r.label) for r in read_records(file)] == [(p.resolve(), y) for p, y in expected[split]]
