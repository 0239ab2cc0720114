"""A data source is one file: ``@register_source`` above its class registers it, the ``dataset`` config block (and
every ``eval_on`` target) takes its config, and the prepare stage reads it through the registry."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
from pydantic import ValidationError

from fewclip.data.prepare import load_prepared, prepare
from fewclip.data.sources import SOURCES, SourceConfig, build_source, dataset_label, list_sources
from fewclip.data.sources.registry import rebuild_source_configs, register_source
from fewclip.runner.config import build_config_class, describe_error
from fewclip.runner.layout import RunLayout

BUILTIN_ORDER = ["hf", "folder", "csv", "world", "coop"]

SQUARES_MODULE = '''
"""Solid-colour squares drawn on the fly: everything a new data source needs, in one file."""

import functools
import io
from typing import Iterator, Literal

from PIL import Image
from pydantic import Field

from fewclip.data.sources.base import SourceConfig, SourceItem, Split
from fewclip.data.sources.registry import register_source

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


class SquaresConfig(SourceConfig):
    source: Literal["squares"] = "squares"
    per_class: int = Field(3, ge=1, description="Squares per class and split.")


def square_png(name: str, split: str, index: int) -> bytes:
    shade = (index * 7 + (split == "test") * 3) % 30  # every image its own bytes
    image = Image.new("RGB", (16, 16), tuple(min(255, c + shade) for c in COLOURS[name]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@register_source
class SquaresSource:
    Config = SquaresConfig

    def __init__(self, config: SquaresConfig) -> None:
        self.config = config

    def class_names(self, split: Split = "train") -> list[str]:
        return list(COLOURS)

    def items(self, split: Split, classes: list[str]) -> Iterator[SourceItem]:
        for name in classes:
            for index in range(self.config.per_class):
                yield SourceItem(name, f"squares:{split}/{name}/{index}",
                                 read_bytes=functools.partial(square_png, name, split, index))
'''


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Sources registered during the test leave the registry (and every ``eval_on`` type) when it ends."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SOURCES, "_items", dict(SOURCES._items))
        yield
    rebuild_source_configs()


def import_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the module at ``path`` as a user's own file would be imported (gone from sys.modules afterwards)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    return module


def test_the_builtin_sources_register_themselves_in_their_order() -> None:
    assert list_sources() == BUILTIN_ORDER
    for name in BUILTIN_ORDER:
        assert SOURCES.get(name).Config.model_fields["source"].default == name


def test_a_source_in_one_new_file_is_registered_configured_and_prepared(
    tmp_path: Path, scratch_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "squares_source.py").write_text(textwrap.dedent(SQUARES_MODULE))
    module = import_file(tmp_path / "squares_source.py", monkeypatch)
    assert list_sources() == BUILTIN_ORDER + ["squares"]
    assert SOURCES.get("squares") is module.SquaresSource

    # the run config takes its block as `dataset`, and as an eval_on target of any source
    config = build_config_class().model_validate(
        {
            "dataset": {
                "source": "squares",
                "per_class": 4,
                "eval_on": [{"source": "squares", "per_class": 2, "label": "few_squares"}],
            },
            "methods": ["zero_shot"],
        }
    )
    assert isinstance(config.dataset, module.SquaresConfig) and config.dataset.per_class == 4
    target = config.dataset.eval_on[0]
    assert isinstance(target, module.SquaresConfig) and target.key == "dataset.eval_on[0]"
    assert dataset_label(config.dataset) == "squares"  # SourceConfig's default label: the source's name
    assert dataset_label(target) == "few_squares"
    folder_target = build_config_class().model_validate(
        {"dataset": {"source": "folder", "path": str(tmp_path), "eval_on": [{"source": "squares"}]}}
    )
    assert isinstance(folder_target.dataset.eval_on[0], module.SquaresConfig)

    # prepare reads it through the registry
    assert isinstance(build_source(config.dataset), module.SquaresSource)
    layout = RunLayout(tmp_path / "run")
    prepare(config.dataset, layout)
    classes, train, test = load_prepared(layout)
    assert classes.raw == ["red", "green", "blue"]
    assert [r.class_name for r in train] == ["red"] * 4 + ["green"] * 4 + ["blue"] * 4
    assert len(test) == 12 and all((layout.data / r.path).is_file() for r in train + test)


def test_a_source_leaves_the_config_with_the_registry(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SOURCES, "_items", dict(SOURCES._items))
        (tmp_path / "squares_gone.py").write_text(textwrap.dedent(SQUARES_MODULE))
        import_file(tmp_path / "squares_gone.py", patch)
        assert "squares" in list_sources()
    rebuild_source_configs()
    data = {"dataset": {"source": "folder", "path": str(tmp_path), "eval_on": [{"source": "squares"}]}}
    with pytest.raises(ValidationError) as refused:
        build_config_class().model_validate(data)
    assert [describe_error(e, data) for e in refused.value.errors()] == [
        "dataset.eval_on.0.source: unknown data source 'squares'; valid: " + ", ".join(BUILTIN_ORDER)
    ]


def test_a_source_must_name_itself_in_its_config(scratch_registry: None) -> None:
    class Unnamed(SourceConfig):
        colour: str = "red"

    class UnnamedSource:
        Config = Unnamed

    with pytest.raises(
        TypeError,
        match=r"Unnamed: a source config names its source in one key, "
        r"`source: Literal\[\"<name>\"\] = \"<name>\"`",
    ):
        register_source(UnnamedSource)

    class NoConfig:
        pass

    with pytest.raises(TypeError, match="NoConfig: set `Config` to the source's config block"):
        register_source(NoConfig)
    assert list_sources() == BUILTIN_ORDER


def test_a_source_name_registered_twice_is_refused(scratch_registry: None) -> None:
    again = type("FolderAgain", (), {"Config": SOURCES.get("folder").Config})
    with pytest.raises(ValueError, match="data source 'folder' is registered twice"):
        register_source(again)
    assert SOURCES.get("folder").__name__ == "FolderSource"
