"""Data: sources, the prepare stage, records and few-shot splits."""

from .images import UnreadableImage, read_image, to_rgb
from .prepare import ClassNames, load_prepared, prepare
from .records import Record, read_records, write_records
from .sources import list_sources
from .splits import load_split, make_splits, write_splits

__all__ = [
    "ClassNames", "Record", "UnreadableImage", "list_sources", "load_prepared", "load_split", "make_splits",
    "prepare", "read_image", "read_records", "to_rgb", "write_records", "write_splits",
]
