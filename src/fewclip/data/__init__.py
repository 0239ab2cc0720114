"""Data: sources, the prepare stage, records and few-shot splits."""

from fewclip.data.images import UnreadableImage, read_image, to_rgb
from fewclip.data.prepare import ClassNames, load_prepared, prepare
from fewclip.data.records import Record, read_records, write_records
from fewclip.data.sources import list_sources
from fewclip.data.splits import load_split, make_splits, write_splits

__all__ = [
    "ClassNames",
    "Record",
    "UnreadableImage",
    "list_sources",
    "load_prepared",
    "load_split",
    "make_splits",
    "prepare",
    "read_image",
    "read_records",
    "to_rgb",
    "write_records",
    "write_splits",
]
