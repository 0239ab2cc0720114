"""Data sources, one small module each, behind one registry (``list_sources()``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Union

from pydantic import Field

from fewclip.registry import Registry
from fewclip.data.sources.base import Source, SourceConfig, SourceItem
from fewclip.data.sources.coop import CoopSource, CoopSourceConfig
from fewclip.data.sources.csv_source import CsvSource, CsvSourceConfig
from fewclip.data.sources.folder import FolderSource, FolderSourceConfig
from fewclip.data.sources.hf import HFSource, HFSourceConfig
from fewclip.data.sources.world import WorldSource, WorldSourceConfig

SOURCES: Registry[tuple[type[SourceConfig], Callable[[Any], Source]]] = Registry("data source")
SOURCES.register("hf", (HFSourceConfig, HFSource))
SOURCES.register("folder", (FolderSourceConfig, FolderSource))
SOURCES.register("csv", (CsvSourceConfig, CsvSource))
SOURCES.register("world", (WorldSourceConfig, WorldSource))
SOURCES.register("coop", (CoopSourceConfig, CoopSource))

# The `dataset` config block: one config class per source, chosen by the `source` key.
DatasetConfig = Annotated[
    Union[HFSourceConfig, FolderSourceConfig, CsvSourceConfig, WorldSourceConfig, CoopSourceConfig],
    Field(discriminator="source"),
]

for _config_class in (SourceConfig, HFSourceConfig, FolderSourceConfig, CsvSourceConfig, WorldSourceConfig,
                      CoopSourceConfig):  # eval_on holds dataset blocks: resolve the forward reference
    _config_class.model_rebuild(_types_namespace={"DatasetConfig": DatasetConfig})

# source -> the default name of a dataset in tables (an eval_on target's split)
DEFAULT_LABELS: dict[str, Callable[[Any], str]] = {
    "coop": lambda c: c.name,
    "folder": lambda c: Path(c.path).expanduser().name or "folder",
    "hf": lambda c: c.id.rstrip("/").split("/")[-1] + (f"-{c.name}" if c.name else ""),
    "csv": lambda c: Path(c.train).stem,
    "world": lambda c: "world",
}


def dataset_label(config: SourceConfig) -> str:
    """The dataset's name in tables: its ``label``, else a name from its source (CoOp name, folder, id)."""
    return config.label or DEFAULT_LABELS[config.source](config)  # type: ignore[attr-defined]


def list_sources() -> list[str]:
    return SOURCES.names()


def build_source(config: SourceConfig) -> Source:
    _, factory = SOURCES.get(config.source)  # type: ignore[attr-defined]
    return factory(config)


__all__ = ["DatasetConfig", "dataset_label", "Source", "SourceConfig", "SourceItem", "build_source", "list_sources", "SOURCES"]
