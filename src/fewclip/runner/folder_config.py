"""The config for a folder of the user's own images: ``fewclip run FOLDER`` and ``fewclip init FOLDER``.

The folder is a ``folder`` data source (``<class>/<image>``, or ``train/`` + ``test/`` or ``train/`` + ``val/``
of them). The config is built from the run config's own defaults (a real CLIP, ``model.id``'s default), not from
the embedded world default, whose dataset keys a folder does not take; what it sets is what the folder decides:

- the heads that train on cached features (``fewclip.heads.on_features``: the encoders run once), 3 seeds;
- the shot budgets the smallest class allows: 1, 2, 4, 8, 16 up to its train images less the validation images,
  which a small class shrinks too (at most half of it), so that a class of 2 images still gives 1 shot + 1
  validation image; said in the log, and left alone when the command line sets them;
- ``output.dir`` ``runs/<folder name>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fewclip.data.sources.base import Split
from fewclip.data.sources.folder import FolderSource, FolderSourceConfig
from fewclip.heads import HEADS, list_heads
from fewclip.heads import on_features
from fewclip.runner.config import Config, ConfigError, apply_overrides, load_config
from fewclip.runner.layout import RunFiles

log = logging.getLogger(__name__)

BUDGETS = (1, 2, 4, 8, 16)  # the shot budgets of the few-shot papers, as many as the smallest class allows
SEEDS = [1, 2, 3]
RUN_MARKER = RunFiles(Path()).marker.name


def is_image_folder(folder: Path) -> bool:
    """Whether a folder given where a config goes is meant as a folder of images: it has subfolders (the classes,
    or train/ and test/) and is not a run directory (which has a marker and, once a stage ran, config.yaml)."""
    if (folder / "config.yaml").is_file() or (folder / RUN_MARKER).exists():
        return False
    return any(child.is_dir() and not child.name.startswith(".") for child in folder.iterdir())


def feature_heads() -> list[str]:
    """The registered heads that train on cached features (in ``list_heads()`` order): fast on any CLIP, as the
    encoders run once, in the features stage."""
    return [name for name in list_heads() if HEADS.get(name).__module__.startswith(on_features.__name__ + ".")]


@dataclass(frozen=True)
class FolderSurvey:
    """What a folder of images holds: its layout and, per class, its train and test images."""

    root: Path
    layout: str  # how the folder is laid out, in words
    train: dict[str, int]  # class -> train images (after the held-out share, when the folder has no split folders)
    test: dict[str, int]

    @property
    def smallest(self) -> tuple[str, int]:
        """The class with the fewest train images, and how many."""
        name = min(self.train, key=lambda name: (self.train[name], name))
        return name, self.train[name]

    def budget_text(self, shots: Sequence[int], val_per_class: int) -> str:
        """``the smallest, 'cat', has 2 train images: shots [1] with 1 validation image(s) per class``."""
        name, count = self.smallest
        return (
            f"the smallest, {name!r}, has {count} train images: shots {list(shots)} with {val_per_class} "
            "validation image(s) per class"
        )


def survey(dataset: FolderSourceConfig) -> FolderSurvey:
    """Count the images of each class of ``dataset`` (its ``classes`` when listed), split as prepare splits them."""
    source = FolderSource(dataset)
    classes = dataset.classes or source.class_names("train")
    train, test = ({name: 0 for name in classes} for _ in range(2))
    splits: tuple[tuple[Split, dict[str, int]], ...] = (("train", train), ("test", test))
    for split, counts in splits:
        for item in source.items(split, classes):
            counts[item.class_name] += 1
    if dataset.max_train_per_class is not None:
        train = {name: min(n, dataset.max_train_per_class) for name, n in train.items()}
    if source.splits is None:
        layout = f"class folders ({dataset.test_fraction:g} of each class held out for test)"
    elif source.splits[0] is None:
        layout = f"{source.splits[1]}/ alone (a test-only set)"
    else:
        layout = f"{source.splits[0]}/ + {source.splits[1]}/"
    return FolderSurvey(source.root, layout, train, test)


@dataclass(frozen=True)
class Budgets:
    """The shot budgets and validation images per class that a folder's smallest class allows."""

    shots: list[int]
    val_per_class: int


def allowed_budgets(smallest: int, val_per_class: int, val_given: bool = False) -> Budgets:
    """The budgets of ``BUDGETS`` that ``smallest`` train images hold beside the validation images, which are
    ``val_per_class`` when given (``val_given``) and otherwise at most half of the smallest class."""
    val = val_per_class if val_given else min(val_per_class, smallest // 2)
    return Budgets([k for k in BUDGETS if k + val <= smallest], val)


def folder_base(folder: Path, cache_dir: Path) -> dict[str, Any]:
    """The config a folder starts from, before its budgets: the run config's defaults plus the folder's dataset,
    the heads on cached features, 3 seeds, ``runs/<folder name>``."""
    name = folder.resolve().name
    return {
        "name": name,
        "methods": feature_heads(),
        "dataset": {"source": "folder", "path": str(folder.resolve())},
        "splits": {"seeds": list(SEEDS)},
        "output": {"dir": f"runs/{name}"},
        "cache": {"dir": str(cache_dir)},
    }


def with_budgets(base: dict[str, Any], config: Config, overrides: Sequence[str]) -> dict[str, Any]:
    """``base`` with the budgets the smallest class of ``config``'s folder allows (the command line's shots or
    validation images stand); a ``ConfigError`` naming the class when it allows none."""
    if not isinstance(config.dataset, FolderSourceConfig):
        return base  # the command line chose another source: it says what to read, and budgets are its own
    given = apply_overrides({}, overrides)  # the blocks the command line sets
    found = survey(config.dataset)
    smallest, count = found.smallest
    line = f"{config.dataset.key}.path: {found.root}: {len(found.train)} classes ({found.layout})"
    if not sum(found.train.values()):
        log.info("%s: no train images, so zero_shot alone runs", line)
        return {**base, "methods": ["zero_shot"]}
    val_given = "val_per_class" in given.get("splits", {})
    budgets = allowed_budgets(count, config.splits.val_per_class, val_given)
    if "shots" in given.get("few_shot", {}):
        log.info("%s; few_shot.shots from the command line: %s", line, config.few_shot.shots)
        return {**base, "splits": {**base["splits"], "val_per_class": budgets.val_per_class}}
    if not budgets.shots:
        raise ConfigError(
            f"{config.dataset.key}.path: {found.root}: class {smallest!r} has {count} train image(s), fewer than "
            f"1 shot + {budgets.val_per_class} validation image(s); add images to it, lower splits.val_per_class, "
            "or leave it out (dataset.classes lists the classes to keep)"
        )
    log.info("%s; %s", line, found.budget_text(budgets.shots, budgets.val_per_class))
    return {
        **base,
        "few_shot": {"shots": budgets.shots},
        "splits": {**base["splits"], "val_per_class": budgets.val_per_class},
    }


def folder_config(folder: Path, overrides: Sequence[str], cache_dir: Path) -> dict[str, Any]:
    """The base config of ``fewclip run FOLDER [overrides]``: ``folder_base`` with the budgets its smallest class
    allows (the overrides validate and count as they will in the run: ``dataset.test_fraction``,
    ``dataset.classes``, ...)."""
    base = folder_base(folder, cache_dir)
    return with_budgets(base, load_config(None, overrides, base=base), overrides)
