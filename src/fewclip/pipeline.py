"""The stages of a run, each a plain function that reads what the last one wrote:

prepare  -> data/{classes.json,train_full.csv,test.csv}, splits/seed_S/shot_K/{train,val}.csv
features -> image features in the shared cache (content-addressed, resumable)
train    -> heads/<method>/shot_K-seed_S.{safetensors,json}, results/history/...
evaluate -> results/ (summary, per-class, per-unit analyses, saliency), predictions/ (see evaluation.py)
report   -> results/aggregate/ (tables over seeds, plots), report.html (see fewclip.report)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .config import Config
from .data.prepare import ClassNames, load_prepared, prepare as prepare_data
from .data.records import Record
from .data.splits import check_budget, load_split, write_splits
from .data.subsample import train_view
from .features import (FeatureCache, augmented_fingerprint, extract_features, extract_views, load_features,
                       load_views, view_key)
from .fileio import atomic_write_text, read_csv, write_csv
from .heads import HEADS, FeatureSet, Task, read_head_meta, save_head
from .layout import RunLayout, unit_name

log = logging.getLogger(__name__)

AUGMENT_SEED = 0  # augmented views are a property of the image, shared by every seed and run



@dataclass
class RunContext:
    """A config, its run directory, and the backbone and feature cache, loaded on first use."""

    config: Config
    _backbone: Any = field(default=None, repr=False)
    _cache: FeatureCache | None = field(default=None, repr=False)
    _view_cache: FeatureCache | None = field(default=None, repr=False)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(Path(self.config.output.dir).expanduser())

    @property
    def cache_root(self) -> Path:
        return Path(self.config.cache.dir).expanduser()

    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            from .backbones import load_backbone

            self._backbone = load_backbone(self.config.model, cache_dir=self.cache_root)
        return self._backbone

    @property
    def cache(self) -> FeatureCache:
        if self._cache is None:
            from .backbones.hf_clip import model_fingerprint

            # Read from the model's files, so a fully cached run never loads the model.
            fingerprint = model_fingerprint(self.config.model, self.cache_root) or self.backbone.fingerprint()
            self._cache = FeatureCache(self.cache_root, fingerprint)
        return self._cache

    @property
    def view_cache(self) -> FeatureCache:
        """Features of augmented views: their own cache key (backbone + augmentation parameters)."""
        if self._view_cache is None:
            self._view_cache = FeatureCache(self.cache_root, augmented_fingerprint(self.cache_fingerprint, AUGMENT_SEED))
        return self._view_cache

    @property
    def cache_fingerprint(self) -> dict[str, Any]:
        return json.loads((self.cache.dir / "fingerprint.json").read_text())

    def augment_views(self) -> int:
        """The most augmented views any selected head asks for (0: none)."""
        return max((getattr(_head_config(self.config, m), "augment_views", 0) for m in self.config.methods), default=0)

    def write_config(self) -> None:
        atomic_write_text(self.layout.config, self.config.to_yaml())


def prepare(ctx: RunContext) -> ClassNames:
    """Export the dataset and write the few-shot splits."""
    cfg = ctx.config

    def check_shots(classes: ClassNames, train_records: list[Record]) -> None:
        check_budget(train_records, classes.raw, cfg.few_shot.shots, cfg.splits.val_per_class, cfg.few_shot.allow_fewer)

    classes = prepare_data(cfg.dataset, ctx.layout, workers=max(cfg.model.loader_threads, 1), validate=check_shots)
    train_view(len(classes.raw), cfg.splits.subsample)  # e.g. base-to-new with one class fails here
    write_splits(ctx.layout, classes.raw, cfg.splits.seeds, cfg.few_shot.shots,
                 cfg.splits.val_per_class, cfg.few_shot.allow_fewer)
    ctx.write_config()
    return classes


def features(ctx: RunContext) -> int:
    """Encode every prepared image not yet in the cache; returns how many were unreadable."""
    ctx.write_config()
    _, train_full, test = load_prepared(ctx.layout)
    options = dict(batch_size=ctx.config.model.batch_size, threads=ctx.config.model.loader_threads,
                   progress=ctx.config.output.progress)
    failures = []
    if ctx.cache.missing([r.sha1 for r in train_full + test]):  # all cached: the model is not even loaded
        failures = extract_features(train_full + test, ctx.layout.data, ctx.backbone, ctx.cache, **options)
    views = ctx.augment_views()
    if views:
        support = _support_records(ctx)
        view_cache = ctx.view_cache
        if view_cache.missing([view_key(r.sha1, v) for r in support for v in range(views)]):
            failures += extract_views(support, ctx.layout.data, ctx.backbone, view_cache, views, AUGMENT_SEED, **options)
    if failures:
        _append_exclusions(ctx.layout, [("features", path, reason) for path, reason in failures])
    return len(failures)


def _support_records(ctx: RunContext) -> list[Record]:
    """Every image in some few-shot train split of this config (the only ones that need views)."""
    seen: dict[str, Record] = {}
    for seed in ctx.config.splits.seeds:
        for shots in ctx.config.few_shot.shots:
            for record in load_split(ctx.layout, seed, shots)[0]:
                seen.setdefault(record.sha1, record)
    return list(seen.values())


def _append_exclusions(layout: RunLayout, rows: list[tuple[str, str, str]]) -> None:
    existing = [(r["split"], r["image"], r["reason"]) for r in read_csv(layout.exclusions)] if layout.exclusions.is_file() else []
    write_csv(layout.exclusions, ("split", "image", "reason"), existing + [r for r in rows if r not in existing])


def _available(ctx: RunContext, records: list[Record]) -> list[Record]:
    """Drop records whose image could not be encoded (listed in exclusions.csv); any other gap is an error."""
    layout = ctx.layout
    excluded = {r["image"] for r in read_csv(layout.exclusions) if r["split"] == "features"} if layout.exclusions.is_file() else set()
    return [r for r in records if r.path not in excluded or r.sha1 in ctx.cache]


def _feature_set(ctx: RunContext, records: list[Record]) -> FeatureSet:
    x, y = load_features(ctx.cache, _available(ctx, records))
    return FeatureSet(x, y)


def units(config: Config) -> Iterator[tuple[str, int, int]]:
    """(method, shots, seed) for every head the config asks for; shot-free heads run once as (m, 0, 0)."""
    for method in config.methods:
        if not HEADS.get(method).uses_shots:
            yield method, 0, 0
            continue
        for seed in config.splits.seeds:
            for shots in config.few_shot.shots:
                yield method, shots, seed


def _head_config(config: Config, method: str) -> Any:
    head_cls = HEADS.get(method)
    return getattr(config, head_cls.config_key) if head_cls.config_key else head_cls.Config()


def _fit_key(ctx: RunContext, method: str, train: list[Record], val: list[Record], class_names: list[str]) -> str:
    """Hash of everything a trained head depends on; a changed input retrains, an unchanged one is skipped."""
    payload = {
        "method": method,
        "config": _head_config(ctx.config, method).model_dump(mode="json"),
        "features": ctx.cache.key,
        "train": [r.sha1 for r in train],
        "val": [r.sha1 for r in val],
        "classes": class_names,
        "templates": ctx.config.prompts.templates,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def train(ctx: RunContext) -> list[str]:
    """Fit every (method, shots, seed); already-trained units with the same inputs are skipped."""
    ctx.write_config()
    classes, _, _ = load_prepared(ctx.layout)
    view = train_view(len(classes.readable), ctx.config.splits.subsample)
    class_names = view.names(classes.readable)
    for method in ctx.config.methods:  # bad input (e.g. a prompt too long) fails before any training starts
        head = HEADS.get(method)(_head_config(ctx.config, method))
        if hasattr(head, "check"):
            head.check(Task(class_names, ctx.config.prompts.templates, ctx.backbone))
    from tqdm.auto import tqdm

    trained = []
    bar = tqdm(list(units(ctx.config)), desc="train", unit="head", disable=not ctx.config.output.progress)
    for method, shots, seed in bar:
        bar.set_postfix_str(unit_name(method, shots, seed))
        stem = ctx.layout.heads / unit_name(method, shots, seed)
        train_records, val_records = load_split(ctx.layout, seed, shots) if shots else ([], [])
        train_records = view.select(_available(ctx, train_records))
        val_records = view.select(_available(ctx, val_records))
        key = _fit_key(ctx, method, train_records, val_records, class_names)
        meta = read_head_meta(stem)
        if meta is not None and meta.get("fit_key") == key:
            continue
        head_cls = HEADS.get(method)
        head = head_cls(_head_config(ctx.config, method))
        backbone = ctx.backbone if head_cls.uses_text else None  # a linear probe never loads the model
        checkpoint = stem.with_name(stem.name + ".ckpt.safetensors")
        task = Task(class_names, ctx.config.prompts.templates, backbone, seed, ctx.config.output.progress,
                    shots=shots, checkpoint=checkpoint)
        start = time.perf_counter()
        if shots:
            train_set = _feature_set(ctx, train_records)
            views = getattr(head.config, "augment_views", 0)
            if views:
                train_set.views = load_views(ctx.view_cache, train_records, views)
            head.fit(task, train_set, _feature_set(ctx, val_records))
        else:
            head.fit(task)
        seconds = time.perf_counter() - start
        extra = {"fit_key": key, "method": method, "shots": shots, "seed": seed, "train_seconds": seconds,
                 "best_epoch": getattr(head, "best_epoch_", None), "templates": ctx.config.prompts.templates,
                 "features_key": ctx.cache.key}
        save_head(head, stem, class_names, extra)
        checkpoint.unlink(missing_ok=True)
        if head.history_:
            cols = list(head.history_[0])
            write_csv(ctx.layout.results / "history" / f"{unit_name(method, shots, seed)}.csv", cols,
                      ([row.get(c, "") for c in cols] for row in head.history_))
        log.info("trained %s in %.1fs", unit_name(method, shots, seed), seconds)
        trained.append(unit_name(method, shots, seed))
    return trained


def evaluate(ctx: RunContext) -> Path:
    """Score every trained head and write the evaluation artifacts (see ``fewclip.evaluation``)."""
    from .evaluation import evaluate_run

    return evaluate_run(ctx)


def report(ctx: RunContext) -> Path:
    """Aggregate tables, plots (if output.figures) and report.html, all read from the evaluate stage's CSVs."""
    from .report.html import build_report

    ctx.write_config()
    return build_report(ctx.layout.root, ctx.config)


STAGES = {"prepare": prepare, "features": features, "train": train, "evaluate": evaluate, "report": report}


def run(config: Config) -> Path:
    """Every stage in order; each skips what an earlier (possibly killed) run already finished."""
    ctx = RunContext(config)
    for stage in STAGES.values():
        stage(ctx)
    return ctx.layout.summary
