"""A Hugging Face ``datasets`` dataset: a hub id (``ethz/food101``) or a local dataset folder."""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Iterator, Literal

from pydantic import Field

from fewclip.data.sources.base import SourceConfig, SourceItem, Split
from fewclip.data.sources.registry import register_source


class HFSourceConfig(SourceConfig):
    source: Literal["hf"] = "hf"
    path_keys: ClassVar[dict[str, str]] = {"id": "folder or hub id"}
    id: str = Field(description="Dataset id on the hub (e.g. ethz/food101) or a local folder load_dataset reads.")
    name: str | None = Field(None, description="Dataset configuration name, if the dataset has several.")
    revision: str | None = Field(None, description="Git revision of the dataset repo.")
    image_column: str = Field("image", description="The column holding the images.")
    label_column: str = Field(
        "label", description="The column holding the class labels (a ClassLabel, or values taken as class names)."
    )
    train_split: str | None = Field(
        "train",
        description="null: a test-only dataset (shot-free methods such as zero_shot evaluate the whole test split).",
    )
    test_split: str = Field("test", description="The split evaluated as the test set.")

    def default_label(self) -> str:
        return self.id.rstrip("/").split("/")[-1] + (f"-{self.name}" if self.name else "")


@register_source
class HFSource:
    Config = HFSourceConfig

    def __init__(self, config: HFSourceConfig) -> None:
        import datasets  # Hugging Face datasets: imported when a hub dataset is read (about 2 s, pyarrow and pandas)

        self.config = config
        self._splits: dict[str, Any] = {}
        self._datasets = datasets

    def _split(self, split: Split) -> Any:
        name = self.config.train_split if split == "train" else self.config.test_split
        if name is None:  # class_names and items ask a test-only dataset for its test split only
            raise ValueError(f"{self.config.key}.train_split is null: {self.config.id} is read as test-only")
        if name not in self._splits:
            try:
                ds = self._datasets.load_dataset(
                    self.config.id, self.config.name, revision=self.config.revision, split=name
                )
            except ValueError as err:
                raise ValueError(
                    f"{self.config.key}.{split}_split: could not load split {name!r} of {self.config.id}: {err}"
                ) from err
            except RuntimeError as err:
                if "Dataset scripts are no longer supported" not in str(err):
                    raise
                raise ValueError(script_dataset_advice(self.config.id, self._datasets.__version__, err)) from None
            for key in ("image_column", "label_column"):
                column = getattr(self.config, key)
                if column not in ds.column_names:
                    raise ValueError(
                        f"{self.config.key}.{key}: column {column!r} not in {self.config.id}[{name}]; "
                        f"columns: {ds.column_names}"
                    )
            self._splits[name] = ds.cast_column(self.config.image_column, self._datasets.Image(decode=False))
        return self._splits[name]

    def _label_names(self, ds: Any) -> list[str] | None:
        feature = ds.features[self.config.label_column]
        return list(feature.names) if hasattr(feature, "names") else None

    def class_names(self, split: Split = "train") -> list[str]:
        ds = self._split("train" if split == "train" and self.config.train_split is not None else "test")
        names = self._label_names(ds)
        if names is None:
            names = sorted({str(v) for v in ds[self.config.label_column]})
        return names

    def items(self, split: Split, classes: list[str]) -> Iterator[SourceItem]:
        if split == "train" and self.config.train_split is None:
            return  # a test-only dataset
        ds = self._split(split)
        names = self._label_names(ds)
        labels = ds[self.config.label_column]
        label_name = (lambda v: names[v]) if names is not None else str
        wanted = set(classes)
        split_name = self.config.train_split if split == "train" else self.config.test_split
        for row, value in enumerate(labels):
            name = label_name(value)
            if name not in wanted:
                continue
            yield SourceItem(
                class_name=name,
                origin=f"{self.config.id}[{split_name}][{row}]",
                read_bytes=functools.partial(_row_image_bytes, ds, row, self.config.image_column),
            )


def _row_image_bytes(ds: Any, row: int, column: str) -> bytes:
    """The encoded image in ``column`` of row ``row`` (read when the image is exported, not when listed)."""
    return _image_bytes(ds[row][column])


def _image_bytes(cell: dict[str, Any]) -> bytes:
    if cell.get("bytes") is not None:
        encoded: bytes = cell["bytes"]
        return encoded
    with open(cell["path"], "rb") as handle:
        return handle.read()


def script_dataset_advice(dataset_id: str, version: str, err: Exception) -> str:
    """What to do about a dataset that is a loading script, which ``datasets`` 4 and later refuse to run."""
    return (
        f"dataset.id: {dataset_id} is a script-based dataset, which datasets {version} no longer runs ({err}). "
        f"Use a copy of it stored as parquet (dataset.id of another hub repo, or a local folder of parquet "
        f"files), or download its images and read them with the folder source "
        f"(dataset.source: folder, dataset.path: <root>/<class>/<image> or <root>/{{train,test}}/<class>/<image>)"
    )
