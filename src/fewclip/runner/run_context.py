"""The run context shared by the stages, evaluation, the report and predict.

A ``RunContext`` holds a config, its run directory, and the backbone and feature caches (loaded on
first use); beside it, the enumeration of a config's units (method, shots, seed) and the loading of
feature sets for records. Everything here is public: the pipeline, evaluation, the report and
``predict`` all import it, and it imports none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from fewclip.backbones import backbone_fingerprint, load_backbone
from fewclip.runner.config import Config, method_block, split_variant
from fewclip.data.records import Record
from fewclip.data.sources.base import check_input_paths
from fewclip.data.splits import load_split
from fewclip.features import FeatureCache, augmented_fingerprint, load_features
from fewclip.fileio import read_csv, write_csv
from fewclip.heads import HEADS, FeatureSet, ImageSet
from fewclip.runner.layout import RunLayout
from fewclip.runner.run_dir import check_location
from fewclip.runner.skeleton import StageContext, checked_cache_dir

AUGMENT_SEED = 0  # augmented views are a property of the image, shared by every seed and run


@dataclass
class RunContext(StageContext):
    """A config, its run directory, and the backbone and feature cache, loaded on first use."""

    config: Config
    _backbone: Any = field(default=None, repr=False)
    _cache: FeatureCache | None = field(default=None, repr=False)
    _view_cache: FeatureCache | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_location(self.config)  # a run dir inside the dataset folder would feed the next prepare

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root)

    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            self._backbone = load_backbone(self.config.model, cache_dir=self.cache_root)
        return self._backbone

    @property
    def cache(self) -> FeatureCache:
        if self._cache is None:
            # Read from the model's files, so a fully cached run never loads the model.
            fingerprint = backbone_fingerprint(self.config.model, self.cache_root) or self.backbone.fingerprint()
            self._cache = FeatureCache(self.cache_root, fingerprint)
        return self._cache

    @property
    def view_cache(self) -> FeatureCache:
        """Features of augmented views: their own cache key (backbone + augmentation parameters)."""
        if self._view_cache is None:
            self._view_cache = FeatureCache(
                self.cache_root, augmented_fingerprint(self.cache_fingerprint, AUGMENT_SEED)
            )
        return self._view_cache

    @property
    def cache_fingerprint(self) -> dict[str, Any]:
        return json.loads((self.cache.dir / "fingerprint.json").read_text())

    def augment_views(self) -> int:
        """The most augmented views any selected head asks for (0: none)."""
        return max(
            (
                head_config(self.config, m).augment_views
                for m in self.config.methods
                if head_class(m).uses_augmented_views
            ),
            default=0,
        )


def check_paths(
    config: Config, stages: Sequence[str], looked_in: Callable[[str], Sequence[Path]] = lambda key: ()
) -> None:
    """Before the run directory is created: the dataset's files and folders exist when ``stages`` prepare, and
    cache.dir can be a folder when they use the cache (``looked_in``: where a relative path was looked for)."""
    if "prepare" in stages:
        check_input_paths(config.dataset, looked_in)
    if set(stages) & {"features", "train", "evaluate"}:
        checked_cache_dir(config)


def support_records(ctx: RunContext) -> list[Record]:
    """Every image in some few-shot train split of this config (the only ones that need views)."""
    seen: dict[str, Record] = {}
    for seed in ctx.config.splits.seeds:
        for shots in ctx.config.few_shot.shots:
            for record in load_split(ctx.layout, seed, shots)[0]:
                seen.setdefault(record.sha1, record)
    return list(seen.values())


def append_exclusions(layout: RunLayout, rows: list[tuple[str, str, str]]) -> None:
    existing = (
        [(r["split"], r["image"], r["reason"]) for r in read_csv(layout.exclusions)]
        if layout.exclusions.is_file()
        else []
    )
    write_csv(layout.exclusions, ("split", "image", "reason"), existing + [r for r in rows if r not in existing])


def available(ctx: RunContext, records: list[Record]) -> list[Record]:
    """Drop records whose image could not be encoded (listed in exclusions.csv); any other gap is an error."""
    layout = ctx.layout
    excluded = (
        {r["image"] for r in read_csv(layout.exclusions) if r["split"] == "features"}
        if layout.exclusions.is_file()
        else set()
    )
    return [r for r in records if r.path not in excluded or r.sha1 in ctx.cache]


def feature_set(ctx: RunContext, records: list[Record]) -> FeatureSet:
    x, y = load_features(ctx.cache, available(ctx, records))
    return FeatureSet(x, y)


def image_set(ctx: RunContext, records: list[Record]) -> ImageSet:
    """The image files and labels of ``records`` (what a ``tunes_encoders`` head trains on)."""
    records = available(ctx, records)
    return ImageSet([r.resolve(ctx.layout.data) for r in records], torch.tensor([r.label for r in records]))


def head_class(method: str) -> Any:
    """The registered head class behind a method name; a variant (``coop@n4``) is its base head's class."""
    return HEADS.get(split_variant(method)[0])


def units(config: Config) -> Iterator[tuple[str, int, int]]:
    """(method, shots, seed) for every head the config asks for; shot-free heads run once as (m, 0, 0)."""
    for method in config.methods:
        if not head_class(method).uses_shots:
            yield method, 0, 0
            continue
        for seed in config.splits.seeds:
            for shots in config.few_shot.shots:
                yield method, shots, seed


def head_config(config: Config, method: str) -> Any:
    """The config block ``method`` trains with (a variant's block has its own keys changed)."""
    return method_block(config, method)
