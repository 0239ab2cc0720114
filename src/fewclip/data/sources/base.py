"""The data-source interface: a source lists labelled images for the train and test splits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterable, Literal, Protocol, Sequence

from pydantic import Field, PrivateAttr, field_validator

from fewclip.configbase import ConfigBlock
from fewclip.data.duplicates import DuplicatePolicy

Split = Literal["train", "val", "test"]  # "val" only from sources whose config has has_val_split

# The share of a source's images held out as its test split when it names none (1: a test-only set)
TestShare = Annotated[float, Field(gt=0, le=1)]
TEST_ONLY = "1: every image is a test image, a test-only set for shot-free methods such as zero_shot"


class SourceConfig(ConfigBlock):
    """Keys every data source shares."""

    # Whether the source lists a validation split of its own (CoOp's split files do); prepare then
    # exports it beside train and test for samplers that draw validation images from it.
    has_val_split: ClassVar[bool] = False
    # key -> "file" or "folder" for the keys that name one on disk (read relative to a YAML config's folder;
    # checked before a run starts); "folder or hub id": a folder when one exists, else left to the source
    path_keys: ClassVar[dict[str, str]] = {}
    # where this block sits in the run config, for messages: "dataset", or "dataset.eval_on[i]" for a target
    _key: str = PrivateAttr("dataset")

    classes: list[str] | None = Field(
        None,
        description="Raw class names to keep, in this order, at least two (null: every class, sorted; then "
        "test images of a class the train split lacks are an error naming the classes, where listing the classes "
        "leaves them out on purpose).",
    )
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="Raw class name -> readable name used in prompts (by default "
        "underscores become spaces: apple_pie -> apple pie); the readable names must be distinct.",
    )
    max_train_per_class: int | None = Field(None, ge=1, description="Cap on exported train images per class.")
    max_test_per_class: int | None = Field(None, ge=1, description="Cap on exported test images per class.")
    duplicates: DuplicatePolicy = Field(
        "error",
        description="Images with identical bytes in two places: error (refused: in train and test, under two "
        "labels, or twice in one split), within_split (copies in one split under one label kept, with a warning), "
        "allow (every copy kept, with a warning; e.g. a published split reproduced as it is).",
    )
    label: str | None = Field(
        None,
        description="This dataset's name in tables; an eval_on target's rows carry it in "
        "summary.csv's split column (default: its CoOp name, else its folder or id's last part). "
        "Letters, digits, '_', '-' and '.'; not test, base, new or hm.",
    )
    # A list of dataset blocks: the registered sources' config classes (``registry.rebuild_source_configs``).
    eval_on: list["DatasetConfig"] = Field(  # type: ignore[name-defined]  # noqa: F821
        default_factory=list,
        description="Target datasets the trained heads are also evaluated on (test images only): domain "
        "generalisation when their classes are this dataset's (ImageNet -> ImageNetV2, -A, ...), "
        "cross-dataset transfer otherwise. Each is a dataset block (source, path, name, ...), "
        "e.g. {source: coop, name: ImageNetA, path: data}; changing it retrains nothing.",
    )

    @property
    def key(self) -> str:
        """This block's dotted place in the run config (``dataset``, ``dataset.eval_on[0]``), for messages."""
        return self._key

    def default_label(self) -> str:
        """This dataset's name in tables when ``label`` is not set: the source's name, unless a source says better
        (a CoOp dataset's name, a folder's, a hub id's last part)."""
        return str(self.source)  # type: ignore[attr-defined]  # each source's block declares its `source` key

    @field_validator("label")
    @classmethod
    def _label_names_a_split(cls, label: str | None) -> str | None:
        if label is not None:
            target_label_problem(label)
        return label

    @field_validator("eval_on")
    @classmethod
    def _flat_distinct_targets(cls, targets: list[Any]) -> list[Any]:
        for index, target in enumerate(targets):
            if target.eval_on:
                raise ValueError(
                    f"eval_on[{index}] ({dataset_label(target)}) has an eval_on of its own; targets are "
                    "evaluated, never trained on: list every target in the trained dataset's eval_on"
                )
            target_label_problem(dataset_label(target), f"eval_on[{index}]")
            target._key = f"dataset.eval_on[{index}]"
        labels = [dataset_label(t) for t in targets]
        repeated = sorted({name for name in labels if labels.count(name) > 1})
        if repeated:
            raise ValueError(f"targets named {repeated} more than once; give each a distinct `label:`")
        return targets


def dataset_label(config: SourceConfig) -> str:
    """The dataset's name in tables: its ``label``, else its source's default (``SourceConfig.default_label``)."""
    return config.label or config.default_label()


RESERVED_SPLITS = ("test", "base", "new", "hm")  # the splits summary.csv already uses
TARGET_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def target_label_problem(label: str, where: str = "label") -> None:
    """Fail unless ``label`` can name a split: file-name safe (it names prediction files) and not a split in use."""
    if not TARGET_LABEL.fullmatch(label):
        raise ValueError(
            f"{where}: {label!r} names files of the run; use letters, digits, '_', '-' or '.' "
            "(set `label:` on the target)"
        )
    if label in RESERVED_SPLITS:
        raise ValueError(
            f"{where}: {label!r} is a split of the trained dataset ({', '.join(RESERVED_SPLITS)}); "
            "give the target another `label:`"
        )


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

    def class_names(self, split: Split = "train") -> list[str]:
        """Raw class names found in ``split`` (train: the classes a run can learn). Sources whose splits share
        one class list (a label feature, a split file) return it for every split."""
        ...

    def items(self, split: Split, classes: list[str]) -> Iterable[SourceItem]: ...


def missing_path_message(config: SourceConfig, key: str, kind: str, looked_in: Sequence[Path] = ()) -> str:
    """Why the ``kind`` ("file" or "folder") a dataset key names cannot be used: it is the other kind, or it
    does not exist (a relative one: in each folder of ``looked_in``, default the working directory)."""
    value = str(getattr(config, key))
    path = Path(value).expanduser()
    where = f"{config.key}.{key}"
    if path.exists():
        return f"{where}: {path} is a {'folder' if path.is_dir() else 'file'}, not a {kind}; name a {kind}"
    if path.is_absolute():
        return f"{where}: {kind} {path} does not exist"
    places = list(looked_in) or [Path.cwd()]
    tried = ", then ".join(f"{base / path}" for base in places)
    rule = (
        "a relative path in a config file is looked for beside the file, then in the working directory"
        if len(places) > 1
        else "a relative path given on the command line or in Python is read from the working directory"
    )
    return f"{where}: {kind} {value} does not exist (looked for {tried}: {rule})"


def check_input_paths(dataset: SourceConfig, looked_in: Callable[[str], Sequence[Path]] = lambda key: ()) -> None:
    """Fail before anything is written when a file or folder a dataset block or one of its eval_on targets
    names is missing, naming its key and where it was looked for (``looked_in(dotted key)``)."""
    for block in (dataset, *dataset.eval_on):
        for name, kind in block.path_keys.items():
            value = getattr(block, name)
            if value is None or kind not in ("file", "folder"):
                continue
            path = Path(value).expanduser()
            if not (path.is_dir() if kind == "folder" else path.is_file()):
                raise FileNotFoundError(missing_path_message(block, name, kind, looked_in(f"{block.key}.{name}")))
