"""Data sources, one small module each, behind one registry (``list_sources()``)."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Union

from pydantic import Field

from ...registry import Registry
from .base import Source, SourceConfig, SourceItem
from .coop import CoopSource, CoopSourceConfig
from .csv_source import CsvSource, CsvSourceConfig
from .folder import FolderSource, FolderSourceConfig
from .hf import HFSource, HFSourceConfig
from .world import WorldSource, WorldSourceConfig

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


def list_sources() -> list[str]:
    return SOURCES.names()


def build_source(config: SourceConfig) -> Source:
    _, factory = SOURCES.get(config.source)  # type: ignore[attr-defined]
    return factory(config)


__all__ = ["DatasetConfig", "Source", "SourceConfig", "SourceItem", "build_source", "list_sources", "SOURCES"]
