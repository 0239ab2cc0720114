"""The prepare stage: resolve classes, export every image to disk, write train_full.csv and test.csv."""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fewclip.fileio import atomic_write_bytes, read_json, write_csv, write_json
from fewclip.data.files import DataFiles
from fewclip.data.duplicates import check_duplicates
from fewclip.data.images import UnreadableImage, image_format_suffix, verify_image
from fewclip.data.records import Record, read_records, write_records
from fewclip.data.sources import Source, SourceConfig, SourceItem, build_source
from fewclip.data.sources.base import Split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassNames:
    """Raw names (as the source spells them) and readable names (used in prompts), by label index."""

    raw: list[str]
    readable: list[str]

    def to_json(self) -> dict[str, list[str]]:
        return {"raw": self.raw, "readable": self.readable}

    @classmethod
    def load(cls, path: Path) -> "ClassNames":
        data = read_json(path)
        return cls(raw=list(data["raw"]), readable=list(data["readable"]))


def humanize(name: str) -> str:
    """``apple_pie`` -> ``apple pie``; ``n01440764``-style ids are left as they are."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip()


def resolve_classes(config: SourceConfig, available: list[str]) -> ClassNames:
    selected = list(config.classes) if config.classes else list(available)
    unknown = [name for name in selected if name not in available]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, available, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        shown = ", ".join(available[:30]) + (" ..." if len(available) > 30 else "")
        raise ValueError(f"{config.key}.classes: unknown class {', '.join(hints)}; the dataset has: {shown}")
    duplicates = sorted({n for n in selected if selected.count(n) > 1})
    if duplicates:
        raise ValueError(f"{config.key}.classes: listed more than once: {duplicates}")
    bad_renames = sorted(set(config.rename) - set(selected))
    if bad_renames:
        raise ValueError(f"{config.key}.rename: {bad_renames} are not among the selected classes {selected}")
    readable = [config.rename.get(name, humanize(name)) for name in selected]
    check_distinct_classes(selected, readable, config.key)
    return ClassNames(raw=selected, readable=readable)


def check_distinct_classes(raw: list[str], readable: list[str], key: str = "dataset") -> None:
    """At least two classes, and no two with the same readable name (they would share every prompt)."""
    if len(raw) < 2:
        raise ValueError(
            f"{key}: need at least two classes, the dataset selection has {len(raw)} ({raw}); "
            f"a classifier over one class is always right: add classes or widen {key}.classes"
        )
    by_name: dict[str, list[str]] = {}
    for raw_name, name in zip(raw, readable):
        by_name.setdefault(name, []).append(raw_name)
    collisions = [f"{names} all read as {name!r}" for name, names in by_name.items() if len(names) > 1]
    if collisions:
        raise ValueError(
            f"{key}: classes {'; '.join(collisions)} in prompts, so a text head could not tell "
            f"them apart; give each a distinct name with {key}.rename (raw name: readable name)"
        )


def check_test_classes(source: Source, train_classes: list[str]) -> None:
    """Refuse test images of classes the train split lacks: no head learns them, and leaving them out would
    score a smaller test set than the user gave, without a word. (Listing dataset.classes leaves them out on
    purpose; the source only lists the files, nothing is read.)"""
    unseen = [name for name in source.class_names("test") if name not in train_classes]
    if not unseen:
        return
    items = list(source.items("test", unseen))
    counts = Counter(item.class_name for item in items)
    total = len(items) + sum(1 for _ in source.items("test", train_classes))
    listed = ", ".join(f"{name!r} ({counts[name]})" for name in unseen)
    examples = "\n  ".join(item.origin for item in items[:3])
    raise ValueError(
        f"dataset: {len(items)} of the {total} test images belong to class(es) the train split lacks: {listed}; "
        f"the class list comes from train, so no head can predict them, and they would be left out of every "
        f"score without a word. For example:\n  "
        f"{examples}\nAdd train images of those classes, or list the classes to keep in dataset.classes (the test "
        f"images of the others are then left out on purpose)"
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "class"


@dataclass
class _Checked:
    item: SourceItem
    data: bytes | None
    error: str | None


def _check(item: SourceItem) -> _Checked:
    """Read the bytes and decode them once, so unreadable images are caught here, not mid-training."""
    if item.path is not None and not item.path.is_file():
        return _Checked(item, None, "missing")
    try:
        data = item.path.read_bytes() if item.path is not None else item.read_bytes()  # type: ignore[misc]
        verify_image(data, item.origin)
        return _Checked(item, data, None)
    except (UnreadableImage, OSError) as err:
        return _Checked(item, None, str(err))


def _checked_items(items: Iterable[SourceItem], workers: int) -> Iterator[_Checked]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_check, items, chunksize=1) if workers > 1 else map(_check, items)


@dataclass
class ExportedSplit:
    """One split as prepare exported it: its records, where each came from, and what it could not export."""

    records: list[Record]
    origins: list[str]  # per record: a path, a CSV line or dataset[split][row], for messages
    exclusions: list[tuple[str, str, str]]  # (split, image, reason) of unreadable images
    missing: list[str]  # listed files that do not exist


def export_split(
    split: str, items: Iterable[SourceItem], classes: ClassNames, layout: DataFiles, cap: int | None, workers: int = 2
) -> ExportedSplit:
    """Check and export one split; each image is read once, and its sha1 computed once, here."""
    label_of = {name: i for i, name in enumerate(classes.raw)}
    counts = {name: 0 for name in classes.raw}
    exported = ExportedSplit([], [], [], [])
    for checked in _checked_items(items, workers):
        item = checked.item
        if cap is not None and counts[item.class_name] >= cap:
            continue
        if checked.error == "missing":
            exported.missing.append(f"{item.origin}: {item.path}")
            continue
        if checked.error is not None:
            log.warning("skipping unreadable image %s: %s", item.origin, checked.error)
            exported.exclusions.append((split, item.origin, checked.error))
            continue
        assert checked.data is not None
        sha1 = hashlib.sha1(checked.data).hexdigest()
        label = label_of[item.class_name]
        if item.path is not None:
            path = str(item.path.resolve())
        else:
            # Named by content: re-exporting is idempotent and never overwrites an image another
            # (older) train_full.csv still points to.
            relative = Path(
                "images",
                split,
                f"{label:04d}_{_safe(item.class_name)}",
                f"{sha1[:20]}{image_format_suffix(checked.data)}",
            )
            target = layout.data / relative
            if not target.is_file():
                atomic_write_bytes(target, checked.data)
            path = relative.as_posix()
        counts[item.class_name] += 1
        exported.records.append(Record(path=path, label=label, class_name=classes.readable[label], sha1=sha1))
        exported.origins.append(item.origin)
    return exported


def source_splits(config: SourceConfig) -> tuple[Split, ...]:
    """The splits prepare exports: train and test, and val where the source has its own."""
    return ("train", "val", "test") if config.has_val_split else ("train", "test")


def source_signature(config: SourceConfig, source: Source, classes: ClassNames) -> str:
    """Hash of the dataset config and, for files on disk, each file's path, size and mtime.

    Its ``eval_on`` targets and ``label`` change no image of this dataset: they are left out."""
    digest = hashlib.sha256(config.model_dump_json(exclude={"eval_on", "label"}).encode())
    for split in source_splits(config):
        for item in source.items(split, classes.raw):
            digest.update(item.origin.encode())
            if item.path is not None:
                stat = item.path.stat() if item.path.is_file() else None
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode() if stat else b"missing")
    return digest.hexdigest()


def prepare(
    config: SourceConfig,
    layout: DataFiles,
    workers: int = 2,
    validate: Callable[[ClassNames, list[Record]], None] | None = None,
    test_only: bool = False,
) -> ClassNames:
    """Run the prepare stage for one dataset config into ``layout``; returns the class names.

    ``validate(classes, train_records)`` runs before anything is written (e.g. the shot budget check).
    When the dataset config and its files are unchanged since the last prepare, nothing is re-read.
    ``test_only`` exports the test split alone (an eval_on target: its train and val images are never read).
    """
    source = build_source(config)
    available = source.class_names("test" if test_only else "train")  # a target is read for its test split alone
    if not test_only and config.classes is None:
        check_test_classes(source, available)
    classes = resolve_classes(config, available)
    signature = source_signature(config, source, classes) + (":test-only" if test_only else "")
    done = layout.data / "prepare.json"
    if done.is_file() and layout.train_full.is_file() and layout.test.is_file():
        if read_json(done).get("signature") == signature:
            if validate is not None:
                validate(classes, read_records(layout.train_full))
            return ClassNames.load(layout.classes)
    all_exclusions: list[tuple[str, str, str]] = []
    outputs: list[tuple[Path, list[Record]]] = []
    exported: dict[str, tuple[list[Record], list[str]]] = {}  # split -> (records, origins): the duplicate check's input
    targets = {
        "train": (config.max_train_per_class, layout.train_full),
        "val": (None, layout.val_full),
        "test": (config.max_test_per_class, layout.test),
    }
    for split in source_splits(config):
        cap, target = targets[split]
        if test_only and split != "test":
            outputs.append((target, []))
            continue
        done_split = export_split(split, source.items(split, classes.raw), classes, layout, cap, workers)
        if done_split.missing:
            missing = done_split.missing
            listed = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise FileNotFoundError(
                f"{len(missing)} image file(s) listed by the dataset do not exist:\n  {listed}\n"
                "Fix the paths (or remove those rows) and run prepare again."
            )
        records = done_split.records
        present = {r.label for r in records}
        empty = [classes.raw[i] for i in range(len(classes.raw)) if i not in present]
        no_train = split == "train" and not records  # fine for shot-free methods; ``validate`` decides
        if empty and not no_train and split != "val":  # a sampler draws what val has (ImageNet has none)
            raise ValueError(
                f"{config.key}: class(es) {empty} have no readable {split} images; "
                f"remove them from {config.key}.classes or add images"
            )
        outputs.append((target, records))
        exported[split] = (records, done_split.origins)
        all_exclusions.extend(done_split.exclusions)
    check_duplicates(exported, config.duplicates, config.key)
    if validate is not None:
        validate(classes, outputs[0][1])
    # Written only once everything is sound, so a failure keeps the last good files.
    done.unlink(missing_ok=True)
    layout.val_full.unlink(missing_ok=True)  # from an earlier source that had a val split
    for target, records in outputs:
        write_records(target, records)
    write_json(layout.classes, classes.to_json())
    write_csv(layout.exclusions, ("split", "image", "reason"), all_exclusions)
    write_json(done, {"signature": signature})
    return classes


def load_prepared(layout: DataFiles) -> tuple[ClassNames, list[Record], list[Record]]:
    if not layout.classes.is_file():
        raise FileNotFoundError(f"{layout.classes} does not exist; run `fewclip prepare` with this config first")
    return ClassNames.load(layout.classes), read_records(layout.train_full), read_records(layout.test)
