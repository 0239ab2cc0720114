"""Class subsets for the base-to-new protocol.

Labels are sorted; base = the first ceil(n/2), new = the rest, each relabelled from 0 (the reference
rule). ``subsample`` picks what a run trains on and what it is evaluated on:
all -> train all, evaluate all ("test"); base -> base/base; new -> new/new;
base2new -> train on base, evaluate on base and on new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from fewclip.data.records import Record

Subsample = Literal["all", "base", "new", "base2new"]


@dataclass(frozen=True)
class ClassView:
    split: str  # the summary's split column: test, base or new
    labels: tuple[int, ...]  # original labels, in their new order

    def names(self, class_names: Sequence[str]) -> list[str]:
        return [class_names[label] for label in self.labels]

    def select(self, records: Sequence[Record]) -> list[Record]:
        """Records of these classes, relabelled 0..len(labels)-1."""
        new_label = {old: new for new, old in enumerate(self.labels)}
        return [replace(r, label=new_label[r.label]) for r in records if r.label in new_label]


def base_new(n_classes: int) -> tuple[ClassView, ClassView]:
    if n_classes < 2:
        raise ValueError(f"splits.subsample: base-to-new needs at least two classes, the dataset has {n_classes}")
    cut = math.ceil(n_classes / 2)
    return ClassView("base", tuple(range(cut))), ClassView("new", tuple(range(cut, n_classes)))


def train_view(n_classes: int, subsample: Subsample) -> ClassView:
    if subsample == "all":
        return ClassView("test", tuple(range(n_classes)))
    base, new = base_new(n_classes)
    return new if subsample == "new" else base


def eval_views(n_classes: int, subsample: Subsample) -> list[ClassView]:
    if subsample == "base2new":
        return list(base_new(n_classes))
    return [train_view(n_classes, subsample)]
