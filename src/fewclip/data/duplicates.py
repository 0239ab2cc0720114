"""One image in two places: found by the sha1 of its bytes, which prepare computes once as it exports each image.

An image in train (or val) and test puts test images in the few-shot sets and inflates accuracy; an image under
two labels cannot be classified right twice; an image twice in one split under one label counts twice (and a
few-shot draw may take it for both train and val). ``dataset.duplicates`` says which of these are refused.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from fewclip.data.records import Record

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["error", "within_split", "allow"]
SHOWN = 5  # duplicated images listed in a message; the rest are counted


@dataclass(frozen=True)
class Copy:
    """Where one copy of an image is: its split, origin (a path, a CSV line, dataset[split][row]) and class."""

    split: str
    origin: str
    class_name: str

    def __str__(self) -> str:
        return f"{self.origin} ({self.split}, {self.class_name})"


# kind -> (what the copies have in common, why it matters, what to do); in the order they are reported
KINDS = {
    "labels": (
        "appear under two labels",
        "a classifier cannot be right on both labels",
        "keep each image under one class",
    ),
    "splits": (
        "are in both {splits}",
        "the same image would be trained on (or validated on) and scored, which inflates accuracy",
        "keep each image in one split; `{key}.duplicates: allow` keeps them, e.g. to reproduce a "
        "published split as it is",
    ),
    "repeats": (
        "appear more than once in one split under one label",
        "they count twice, and a few-shot draw may take one image for both its train and val sets",
        "remove the copies, or set `{key}.duplicates: within_split` to keep them",
    ),
}
ALLOWED = {"error": (), "within_split": ("repeats",), "allow": ("labels", "splits", "repeats")}


def duplicated_images(splits: Mapping[str, tuple[Sequence[Record], Sequence[str]]]) -> dict[str, list[list[Copy]]]:
    """kind -> the copies of each image found in more than one place, from each split's (records, origins)."""
    copies: dict[str, list[Copy]] = defaultdict(list)
    for split, (records, origins) in splits.items():
        for record, origin in zip(records, origins):
            copies[record.sha1].append(Copy(split, origin, record.class_name))
    found: dict[str, list[list[Copy]]] = {kind: [] for kind in KINDS}
    for group in copies.values():
        if len(group) < 2:
            continue
        kind = (
            "labels"
            if len({c.class_name for c in group}) > 1
            else "splits"
            if len({c.split for c in group}) > 1
            else "repeats"
        )
        found[kind].append(group)
    return found


def _describe(kind: str, groups: list[list[Copy]], where: str, split_order: Sequence[str]) -> tuple[str, str, str]:
    """(what was found, why it matters, what to do) for one kind of duplicate."""
    splits = [split for split in split_order if any(c.split == split for group in groups for c in group)]
    what, why, advice = KINDS[kind]
    files = sum(map(len, groups))
    return (
        f"{where}: {len(groups)} image(s) {what.format(splits=' and '.join(splits))} ({files} files with "
        "identical bytes, by sha1)",
        why,
        advice,
    )


def _copies(group: list[Copy]) -> str:
    shown = " = ".join(map(str, group[:SHOWN]))
    return shown + (f" (and {len(group) - SHOWN} more copies)" if len(group) > SHOWN else "")


def check_duplicates(
    splits: Mapping[str, tuple[Sequence[Record], Sequence[str]]], policy: DuplicatePolicy, where: str = "dataset"
) -> None:
    """Raise for every kind of duplicate ``policy`` refuses (all kinds in one message, a few copies listed);
    log a warning for those it keeps. ``where``: the dataset block's place in the config (``dataset``, ...)."""
    problems = []
    for kind, groups in duplicated_images(splits).items():
        if not groups:
            continue
        head, why, advice = _describe(kind, groups, where, list(splits))
        if kind in ALLOWED[policy]:
            log.warning("%s, kept (%s.duplicates: %s): %s", head, where, policy, why)
            continue
        listed = "\n  ".join(_copies(group) for group in groups[:SHOWN])
        more = f"\n  ... and {len(groups) - SHOWN} more" if len(groups) > SHOWN else ""
        advice = advice.format(key=where)
        problems.append(f"{head}; {why}:\n  {listed}{more}\n{advice[0].upper()}{advice[1:]}.")
    if problems:
        raise ValueError("\n".join(problems))
