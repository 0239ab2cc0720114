"""Few-shot splits: per seed and shot budget K, a train.csv (K per class) and a val.csv.

The order of each class's images comes from hashing (seed, image content hash), so the same data
gives the same files on any machine. Validation images are drawn first and are the same for every K;
train images for K are the first K of the rest, so smaller K are nested inside larger K.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Literal, Sequence

from fewclip.data.files import DataFiles
from fewclip.data.dassl_fewshot import check_coop_budget, coop_splits_for_run
from fewclip.data.records import Record, read_records, write_records

log = logging.getLogger(__name__)

Sampler = Literal["fewclip", "coop"]  # coop: CoOp's own sets from the dataset's split lists (dassl_fewshot.py)


def _order_key(seed: int, record: Record) -> tuple[str, str]:
    digest = hashlib.sha256(f"{seed}:{record.sha1}".encode()).hexdigest()
    return digest, Path(record.path).name  # the name only breaks ties between identical images


def shuffled_by_class(records: Sequence[Record], seed: int) -> dict[int, list[Record]]:
    by_class: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        by_class[record.label].append(record)
    return {label: sorted(items, key=lambda r: _order_key(seed, r)) for label, items in sorted(by_class.items())}


def check_budget(
    records: Sequence[Record],
    class_names: Sequence[str],
    shots: Sequence[int],
    val_per_class: int,
    allow_fewer: bool,
    sampler: Sampler = "fewclip",
) -> None:
    """Fail before writing anything if a class cannot supply max(shots) + val_per_class images
    (CoOp's sampler takes all of a short class, as CoOp does)."""
    if sampler == "coop":
        check_coop_budget(records, class_names, shots)
        return
    need = max(shots) + val_per_class
    counts = {label: 0 for label in range(len(class_names))}
    for record in records:
        counts[record.label] += 1
    short = [(class_names[label], n) for label, n in counts.items() if n < need]
    if not records:
        raise ValueError(
            "the dataset has no train images (a test-only set), so no few-shot split can be drawn; run only "
            "shot-free methods on it (methods: [zero_shot]), or give the dataset a train split"
        )
    if short and not allow_fewer:
        listed = ", ".join(f"{name!r} has {n}" for name, n in short)
        raise ValueError(
            f"few_shot.shots: {max(shots)} shots + {val_per_class} validation images per class need {need} "
            f"train images per class, but {listed}. Lower few_shot.shots or splits.val_per_class, "
            "or set few_shot.allow_fewer: true to cap those classes at what they have."
        )
    for name, n in short:
        log.warning(
            "class %r has %d train images: fewer than %d shots + %d val; capping", name, n, max(shots), val_per_class
        )


def make_splits(
    records: Sequence[Record], seed: int, shots: Sequence[int], val_per_class: int
) -> dict[int, tuple[list[Record], list[Record]]]:
    """Return {K: (train, val)} for one seed. Validation takes priority over train when a class is short."""
    result: dict[int, tuple[list[Record], list[Record]]] = {k: ([], []) for k in shots}
    for items in shuffled_by_class(records, seed).values():
        n_val = min(val_per_class, max(len(items) - 1, 0))
        val, pool = items[:n_val], items[n_val:]
        for k in shots:
            result[k][0].extend(pool[:k])
            result[k][1].extend(val)
    return result


def write_splits(
    layout: DataFiles,
    class_names: Sequence[str],
    seeds: Sequence[int],
    shots: Sequence[int],
    val_per_class: int,
    allow_fewer: bool = False,
    checked: bool = False,
    sampler: Sampler = "fewclip",
) -> None:
    """Write every (seed, shots) split; ``checked``: the caller already ran ``check_budget`` (and warned)."""
    records = read_records(layout.train_full)
    if not checked:
        check_budget(records, class_names, shots, val_per_class, allow_fewer, sampler)  # before anything is written
    for seed in seeds:
        drawn = (
            coop_splits_for_run(layout, seed, shots, val_per_class)
            if sampler == "coop"
            else make_splits(records, seed, shots, val_per_class)
        )
        for k, (train, val) in drawn.items():
            folder = layout.split_dir(seed, k)
            write_records(folder / "train.csv", train)
            write_records(folder / "val.csv", val)


def load_split(layout: DataFiles, seed: int, shots: int) -> tuple[list[Record], list[Record]]:
    folder = layout.split_dir(seed, shots)
    return read_records(folder / "train.csv"), read_records(folder / "val.csv")
