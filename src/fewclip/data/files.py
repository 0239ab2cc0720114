"""The prepared-data files the data stage writes and reads, as a protocol: the runner's ``RunLayout`` (which places
them in a run directory) satisfies it, so the library's data modules name the files without importing the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class DataFiles(Protocol):
    """Where a run's prepared data lives (``fewclip.runner.layout.RunLayout`` is the implementation)."""

    @property
    def data(self) -> Path: ...  # prepare's output folder

    @property
    def classes(self) -> Path: ...  # classes.json

    @property
    def train_full(self) -> Path: ...  # every training image, one CSV row each

    @property
    def val_full(self) -> Path: ...  # the dataset's own validation split, where it has one

    @property
    def test(self) -> Path: ...

    @property
    def exclusions(self) -> Path: ...  # images prepare left out, with the reason

    def split_dir(self, seed: int, shots: int) -> Path: ...  # one few-shot split's folder

    @property
    def targets(self) -> Path: ...  # the evaluation targets' index (dataset.eval_on)

    def target(self, label: str) -> DataFiles: ...  # one evaluation target's own files
