"""dataset.eval_on targets as config, and the test-only ImageNet variants read in CoOp's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewclip.runner.config import ConfigError
from fewclip.data.sources import build_source
from fewclip.data.sources.dassl_layouts import CoopSourceConfig
from fewclip.runner.run_dir import config_differences

from tests.data.coop_layout import IMAGENET_CLASSES, build_imagenet_variant


def coop(name: str, **keys) -> dict:
    return {"source": "coop", "path": "data", "name": name, **keys}


def test_targets_are_dataset_blocks_named_by_label_or_coop_name(make_config) -> None:
    config = make_config(
        dataset=coop(
            "ImageNet", eval_on=[coop("ImageNetA"), {"source": "folder", "path": "x/sk", "label": "sketch_folder"}]
        )
    )
    from fewclip.data.sources import dataset_label

    assert [dataset_label(t) for t in config.dataset.eval_on] == ["ImageNetA", "sketch_folder"]
    assert config.dataset.eval_on[1].test_fraction == 0.2  # a full folder block, with its defaults


@pytest.mark.parametrize(
    "targets, message",
    [
        (
            [coop("ImageNetA"), coop("ImageNetA")],
            "targets named ['ImageNetA'] more than once; give each a distinct `label:`",
        ),
        ([coop("ImageNetA", label="test")], "'test' is a split of the trained dataset"),
        ([coop("ImageNetA", label="a/b")], "'a/b' names files of the run"),
        ([coop("ImageNetA", eval_on=[coop("ImageNetR")])], "eval_on[0] (ImageNetA) has an eval_on of its own"),
        ([coop("ImageNetQ")], "ImageNetQ"),
        ([{"source": "coop", "path": "data", "nme": "ImageNetA"}], "dataset.eval_on.0.nme: Extra inputs"),
    ],
)
def test_bad_targets_are_config_errors_naming_the_problem(make_config, targets: list, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(dataset=coop("ImageNet", eval_on=targets))
    assert message in str(err.value)


def test_changing_targets_is_not_a_run_defining_change(make_config) -> None:
    before = make_config(dataset=coop("ImageNet"))
    after = make_config(dataset=coop("ImageNet", eval_on=[coop("ImageNetV2")]))
    assert config_differences(before, after) == []
    other = make_config(dataset=coop("ImageNet", path="elsewhere"))
    assert config_differences(before, other) == ["dataset.path: 'data' -> 'elsewhere'"]


@pytest.mark.parametrize("name", ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"])
def test_variants_are_test_only_with_imagenet_class_names(tmp_path: Path, name: str) -> None:
    images = build_imagenet_variant(tmp_path, name)
    source = build_source(CoopSourceConfig(path=str(tmp_path), name=name))
    expected_names = list(dict.fromkeys(n for _, n in images))
    assert source.class_names() == expected_names
    assert len(expected_names) == (2 if name in ("ImageNetA", "ImageNetR") else len(IMAGENET_CLASSES))
    assert list(source.items("train", expected_names)) == [] and list(source.items("val", expected_names)) == []
    assert sorted((item.path, item.class_name) for item in source.items("test", expected_names)) == sorted(images)


def test_imagenetv2_folders_are_labels_named_in_classnames_order(tmp_path: Path) -> None:
    """Folder 0 is classnames.txt's first line, whatever its wnid sorts as."""
    build_imagenet_variant(tmp_path, "ImageNetV2")
    names_file = tmp_path / "imagenetv2" / "classnames.txt"
    names_file.write_text("n09999999 zebra fish\nn01443537 goldfish\nn01484850 great white shark\n")
    source = build_source(CoopSourceConfig(path=str(tmp_path), name="ImageNetV2"))
    assert source.class_names() == ["zebra fish", "goldfish", "great white shark"]
    first = [item for item in source.items("test", source.class_names()) if item.path.parent.name == "0"]
    assert first and all(item.class_name == "zebra fish" for item in first)


def test_a_variant_missing_its_classnames_is_one_error_naming_where(tmp_path: Path) -> None:
    build_imagenet_variant(tmp_path, "ImageNetA")
    (tmp_path / "imagenet-adversarial" / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        build_source(CoopSourceConfig(path=str(tmp_path), name="ImageNetA"))
    assert str(tmp_path / "imagenet-adversarial" / "classnames.txt") in str(err.value)
    assert "DATASETS.md" in str(err.value)
