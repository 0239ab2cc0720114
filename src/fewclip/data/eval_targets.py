"""Evaluation targets (``dataset.eval_on``): other datasets the heads trained on ``dataset`` are scored on.

A target is a dataset block of its own; only its test split is read (``targets/<label>/data/``), its images
are encoded through the run's feature cache, and every trained unit is evaluated on it. Its rows in
summary.csv carry the target's label in the ``split`` column. Two protocols follow from its classes:

- domain generalisation: every target class is a class of the source (by readable name, e.g. ImageNet ->
  ImageNetV2, -Sketch, -A, -R). The head's own logits are used, restricted to the target's classes
  (ImageNet-A and -R: 200 of ImageNet's 1,000), as CoOp's code does when it builds the classifier over
  the target's class names; every head can do this.
- cross-dataset transfer: the target has classes the source lacks. A head that ``transfers`` classifies them
  (``head.transfer``, as for base-to-new's new classes); one that cannot (a linear probe, Tip-Adapter) has
  no rows, and ``results/targets.json`` lists it under ``cannot_transfer`` so the tables say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fewclip.data.prepare import load_prepared, prepare as prepare_data
from fewclip.data.records import Record
from fewclip.data.sources import SourceConfig, dataset_label
from fewclip.features import extract_features
from fewclip.fileio import read_json, write_json
from fewclip.data.files import DataFiles

Protocol = Literal["domain_generalisation", "cross_dataset"]
PROTOCOL_TITLES: dict[str, str] = {
    "domain_generalisation": "Domain generalisation",
    "cross_dataset": "Cross-dataset transfer",
}


@dataclass(frozen=True)
class Target:
    """One eval_on dataset: its label (the split column), its config and where its test split is prepared."""

    label: str
    config: SourceConfig
    layout: DataFiles


def targets(dataset: SourceConfig, layout: DataFiles) -> list[Target]:
    """The eval_on targets of a run's dataset, in config order."""
    return [Target(dataset_label(t), t, layout.target(dataset_label(t))) for t in dataset.eval_on]


def prepare_targets(dataset: SourceConfig, layout: DataFiles, workers: int = 2) -> None:
    """Export each target's test split (its own classes, readable names) under ``targets/<label>/``."""
    for target in targets(dataset, layout):
        prepare_data(target.config, target.layout, workers=workers, test_only=True)


def target_view(target: Target) -> tuple[str, list[str], list[Record]]:
    """(label, readable class names, test records) of a prepared target: one evaluation view."""
    classes, _, test = load_prepared(target.layout)
    return target.label, list(classes.readable), test


def protocol_of(source_names: list[str], target_names: list[str]) -> Protocol:
    """Domain generalisation when the target's classes are among the source's, else cross-dataset."""
    return "domain_generalisation" if set(target_names) <= set(source_names) else "cross_dataset"


def subset_columns(source_names: list[str], target_names: list[str]) -> list[int] | None:
    """The source logit columns of the target's classes, in the target's label order; None unless all are there."""
    index = {name: i for i, name in enumerate(source_names)}
    return [index[n] for n in target_names] if all(n in index for n in target_names) else None


def target_summary(
    source: str, source_names: list[str], view: tuple[str, list[str], list[Record]], cannot_transfer: list[str]
) -> dict[str, Any]:
    """One entry of ``results/targets.json``."""
    label, names, records = view
    return {
        "target": label,
        "source": source,
        "protocol": protocol_of(source_names, names),
        "n_classes": len(names),
        "n_test": len(records),
        "cannot_transfer": cannot_transfer,
    }


def write_targets(layout: DataFiles, entries: list[dict[str, Any]]) -> None:
    """``results/targets.json`` (absent when the run has no targets, so an old one never lingers)."""
    if entries:
        write_json(layout.targets, {"targets": entries})
    else:
        layout.targets.unlink(missing_ok=True)


def read_targets(layout: DataFiles) -> list[dict[str, Any]]:
    """The entries ``write_targets`` wrote; [] for a run without targets."""
    if not layout.targets.is_file():
        return []
    return list(read_json(layout.targets).get("targets", []))


def encode_targets(
    dataset: SourceConfig, layout: DataFiles, backbone: Any, cache: Any, **options: Any
) -> list[tuple[str, str]]:
    """Encode every target test image not in the feature cache; returns (path, reason) of those that failed.
    ``backbone`` may be a zero-argument callable, called only when something is missing."""
    failures: list[tuple[str, str]] = []
    for target in targets(dataset, layout):
        _, _, test = load_prepared(target.layout)
        if cache.missing([r.sha1 for r in test]):
            model = backbone() if callable(backbone) else backbone
            failures += extract_features(test, target.layout.data, model, cache, **options)
    return failures
