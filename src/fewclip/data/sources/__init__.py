"""Data sources, one small module each, behind one registry (``list_sources()``).

Each source registers itself where it is defined (``@register_source`` above its class, ``registry.py``); importing
the source modules here fills the registry, in this order, which is the order of ``list_sources()``.
"""

from __future__ import annotations

from fewclip.data.sources.base import Source, SourceConfig, SourceItem, dataset_label
from fewclip.data.sources.registry import SOURCES, build_source, dataset_config, list_sources, register_source
from fewclip.data.sources.hf import HFSource, HFSourceConfig
from fewclip.data.sources.folder import FolderSource, FolderSourceConfig
from fewclip.data.sources.csv_source import CsvSource, CsvSourceConfig
from fewclip.data.sources.world import WorldSource, WorldSourceConfig
from fewclip.data.sources.dassl_layouts import CoopSource, CoopSourceConfig

__all__ = [
    "SOURCES",
    "CoopSource",
    "CoopSourceConfig",
    "CsvSource",
    "CsvSourceConfig",
    "FolderSource",
    "FolderSourceConfig",
    "HFSource",
    "HFSourceConfig",
    "Source",
    "SourceConfig",
    "SourceItem",
    "WorldSource",
    "WorldSourceConfig",
    "build_source",
    "dataset_config",
    "dataset_label",
    "list_sources",
    "register_source",
]
