"""CoOp's few-shot sets (``splits.sampler: coop``): the train/val images CoOp, CoCoOp and MaPLe runs
used for a seed, drawn again from the dataset's own split lists (never from CoOp's pickles).

What those runs do, per (seed S, shots K), in a fresh process: ``random.seed(S)`` (Dassl's
``set_random_seed``, before the dataset is built), then Dassl's ``generate_fewshot_dataset`` on the
train list with K, then on the val list with min(K, 4), on the same random state. That function groups
a list by label in order of first appearance (a ``defaultdict``) and, per group, takes
``random.sample(items, K)``, or every item when the group has fewer than K (``repeat=False``; no
random number is drawn then). So the sets depend on the split file's order, differ across seeds, and
are not nested across K (unlike fewclip's own sampler).
"""

from __future__ import annotations

import logging
import random
from typing import Sequence

from fewclip.fileio import read_csv
from fewclip.data.files import DataFiles
from fewclip.data.records import Record, read_records
from fewclip.data.sources import SourceConfig

log = logging.getLogger(__name__)


def fewshot_subset(records: Sequence[Record], shots: int, rng: random.Random) -> list[Record]:
    """Dassl's ``generate_fewshot_dataset(records, num_shots=shots)`` with ``rng`` as its ``random``."""
    by_label: dict[int, list[Record]] = {}
    for record in records:  # first-appearance order of labels, items in list order
        by_label.setdefault(record.label, []).append(record)
    chosen: list[Record] = []
    for items in by_label.values():
        chosen.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return chosen


def make_coop_splits(
    train: Sequence[Record], val: Sequence[Record], seed: int, shots: Sequence[int], val_per_class: int
) -> dict[int, tuple[list[Record], list[Record]]]:
    """{K: (train, val)} for one seed: per K, seed, draw K train images per class, then
    min(K, val_per_class) val images per class (CoOp: val_per_class 4)."""
    result = {}
    for k in shots:
        rng = random.Random(seed)  # the same stream as random.seed(seed) then random.sample
        few_train = fewshot_subset(train, k, rng)
        n_val = min(k, val_per_class)
        result[k] = (few_train, fewshot_subset(val, n_val, rng) if n_val > 0 else [])
    return result


def check_coop_budget(records: Sequence[Record], class_names: Sequence[str], shots: Sequence[int]) -> None:
    """CoOp's sampler takes all of a class with fewer than K images; say so, fail only without train images."""
    if not records:
        raise ValueError(
            "the dataset's split file has no train images, so no few-shot split can be drawn; run "
            "only shot-free methods on it (methods: [zero_shot])"
        )
    counts = {label: 0 for label in range(len(class_names))}
    for record in records:
        counts[record.label] += 1
    for label, n in counts.items():
        if n < max(shots):
            log.warning(
                "class %r has %d train images, fewer than %d shots: CoOp's sampler takes all %d",
                class_names[label],
                n,
                max(shots),
                n,
            )


def check_nothing_excluded(layout: DataFiles) -> None:
    """An image prepare skipped (unreadable) would shift every later draw: CoOp's sets need all of them."""
    if not layout.exclusions.is_file():
        return
    skipped = [row["image"] for row in read_csv(layout.exclusions) if row["split"] in ("train", "val")]
    if skipped:
        listed = "\n  ".join(skipped[:10]) + (f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        raise ValueError(
            f"splits.sampler: coop draws from the whole split lists, but prepare skipped "
            f"{len(skipped)} unreadable train/val image(s) (see {layout.exclusions}):\n  {listed}\n"
            "Replace those files so the few-shot sets match CoOp's, or use splits.sampler: fewclip"
        )


def coop_splits_for_run(
    layout: DataFiles, seed: int, shots: Sequence[int], val_per_class: int
) -> dict[int, tuple[list[Record], list[Record]]]:
    """CoOp's sets for one seed from the prepared ``train_full.csv`` and ``val_full.csv``."""
    check_nothing_excluded(layout)
    val = read_records(layout.val_full) if layout.val_full.is_file() else []
    return make_coop_splits(read_records(layout.train_full), val, seed, shots, val_per_class)


def coop_sampler_problem(dataset: SourceConfig) -> str | None:
    """Why ``splits.sampler: coop`` cannot reproduce CoOp's sets with this dataset config, or None."""
    if dataset.source != "coop":  # type: ignore[attr-defined]
        return (
            f"sampler coop draws CoOp's sets from a CoOp split file, so it needs dataset.source: coop "
            f"(got {dataset.source!r}); use sampler: fewclip for other sources"  # type: ignore[attr-defined]
        )
    if dataset.classes is not None or dataset.max_train_per_class is not None:
        return (
            "sampler coop draws from every class's full train list, as CoOp does; dataset.classes and "
            "dataset.max_train_per_class change that list, so the sets would not be CoOp's: unset them "
            "(for base/new classes use splits.subsample, which CoOp also applies after drawing)"
        )
    return None
