"""The data-source interface: a source lists labelled images for the train and test splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Literal, Protocol

from pydantic import Field

from ...configbase import ConfigBlock

Split = Literal["train", "val", "test"]  # "val" only from sources whose config has has_val_split


class SourceConfig(ConfigBlock):
    """Keys every data source shares."""

    # Whether the source lists a validation split of its own (CoOp's split files do); prepare then
    # exports it beside train and test for samplers that draw validation images from it.
    has_val_split: ClassVar[bool] = False

    classes: list[str] | None = Field(
        None, description="Raw class names to keep, in this order (None: every class, sorted)."
    )
    rename: dict[str, str] = Field(
        default_factory=dict, description="Raw class name -> readable name used in prompts."
    )
    max_train_per_class: int | None = Field(None, ge=1, description="Cap on exported train images per class.")
    max_test_per_class: int | None = Field(None, ge=1, description="Cap on exported test images per class.")


@dataclass(frozen=True)
class SourceItem:
    """One labelled image of a source, before export.

    ``path`` is set when the image already is a file on disk; otherwise ``read_bytes`` returns
    the encoded image (e.g. from a Hugging Face dataset).
    """

    class_name: str
    origin: str  # where the image came from, for error messages: a path or "dataset[split][row]"
    path: Path | None = None
    read_bytes: Callable[[], bytes] | None = None


class Source(Protocol):
    """Lists the raw class names and the items of a split. Implementations are small modules."""

    def class_names(self) -> list[str]: ...

    def items(self, split: Split, classes: list[str]) -> Iterable[SourceItem]: ...
