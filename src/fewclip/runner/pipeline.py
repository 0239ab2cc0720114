"""The stages of a run, each a plain function that reads what the last one wrote:

prepare  -> data/{classes.json,train_full.csv,test.csv}, splits/seed_S/shot_K/{train,val}.csv
features -> image features in the shared cache (content-addressed, resumable)
train    -> heads/<method>/shot_K-seed_S.{safetensors,json}, results/history/...
evaluate -> results/ (summary, per-class, per-unit analyses, saliency), predictions/ (see runner/evaluation.py)
report   -> results/aggregate/ (tables over seeds, plots), report.html (see fewclip.report)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from fewclip.backbones import check_backbone
from fewclip.runner.config import Config, load_config
from fewclip.data.prepare import ClassNames, load_prepared, prepare as prepare_data
from fewclip.data.records import Record
from fewclip.data.splits import check_budget, load_split, write_splits
from fewclip.data.subsample import train_view
from fewclip.features import FeatureCache, extract_features, extract_views, load_views, view_key
from fewclip.fileio import read_json, remove_stale_temporaries, write_csv
from fewclip.heads import Task, save_head
from fewclip.heads.base import TrainingDiverged, intact_head_meta
from fewclip.training.selection import best_epoch, fit_meta, kept_val_accuracy
from fewclip.interrupt import Progress
from fewclip.runner.layout import unit_name
from fewclip.data.eval_targets import encode_targets, prepare_targets
from fewclip.report.html import build_report
from fewclip.runner.demo import embedded_config
from fewclip.runner.evaluation import evaluate_run
from fewclip.runner.folder_config import folder_config, is_image_folder
from fewclip.runner.run_dir import CLASSIFICATION_RULES
from fewclip.runner.run_context import (
    AUGMENT_SEED,
    RunContext,
    append_exclusions,
    available,
    check_paths,
    feature_set,
    head_class,
    head_config,
    image_set,
    support_records,
    units,
)
from fewclip.runner.skeleton import LookedIn, RunTask, StageRun

log = logging.getLogger(__name__)


def prepare(ctx: RunContext) -> ClassNames:
    """Export the dataset and write the few-shot splits (rank 0 of a torchrun job; the others wait, then
    read what it wrote)."""
    if ctx.ranks.distributed:
        if ctx.ranks.is_main:
            _prepare(ctx)
        ctx.ranks.barrier()
        return load_prepared(ctx.layout)[0]
    return _prepare(ctx)


def _prepare(ctx: RunContext) -> ClassNames:
    cfg = ctx.config
    uses_shots = any(head_class(method).uses_shots for method in cfg.methods)  # zero-shot alone needs no splits

    def check_shots(classes: ClassNames, train_records: list[Record]) -> None:
        if uses_shots:
            check_budget(
                train_records,
                classes.raw,
                cfg.few_shot.shots,
                cfg.splits.val_per_class,
                cfg.few_shot.allow_fewer,
                cfg.splits.sampler,
            )

    classes = prepare_data(cfg.dataset, ctx.layout, workers=max(cfg.model.loader_threads, 1), validate=check_shots)
    train_view(len(classes.raw), cfg.splits.subsample)  # e.g. base-to-new with one class fails here
    prepare_targets(cfg.dataset, ctx.layout, workers=max(cfg.model.loader_threads, 1))  # dataset.eval_on
    if uses_shots:
        write_splits(
            ctx.layout,
            classes.raw,
            cfg.splits.seeds,
            cfg.few_shot.shots,
            cfg.splits.val_per_class,
            cfg.few_shot.allow_fewer,
            checked=True,  # checked by prepare_data
            sampler=cfg.splits.sampler,
        )
    ctx.write_config()
    return classes


def used_records(ctx: RunContext) -> list[Record]:
    """The images some unit of this config reads: every split (train + val) of a (shots, seed) it
    trains, then the test set; images of train_full that no split draws are never encoded."""
    _, _, test = load_prepared(ctx.layout)
    seen: dict[str, Record] = {}
    for shots, seed in sorted({(shots, seed) for _, shots, seed in units(ctx.config) if shots}):
        train_records, val_records = load_split(ctx.layout, seed, shots)
        for record in train_records + val_records:
            seen.setdefault(record.sha1, record)
    for record in test:
        seen.setdefault(record.sha1, record)
    return list(seen.values())


def features(ctx: RunContext) -> int:
    """Encode every image this config uses that is not in the cache yet; returns how many were skipped
    (unreadable, or changed since prepare). A larger budget later encodes only what it adds."""
    ctx.write_config()
    ranks = ctx.ranks
    records = used_records(ctx)
    if ranks.is_main:
        remove_stale_temporaries(ctx.cache.dir)  # left by killed extractions; live writers' are kept
    ranks.barrier()
    # under torchrun each rank encodes its share of the images (its own shards); all wait for all below
    options = dict(
        batch_size=ctx.config.model.batch_size,
        threads=ctx.config.model.loader_threads,
        progress=ctx.config.output.progress and ranks.is_main,
        part=(ranks.rank, ranks.world),
    )
    failures = []
    sha1s = list(dict.fromkeys(r.sha1 for r in records))
    ctx.progress = Progress(len(sha1s), "images encoded", recount=lambda: _cached_count(ctx.cache, sha1s))
    if ctx.cache.missing(sha1s):  # all cached: the model is not even loaded
        failures = extract_features(records, ctx.layout.data, ctx.backbone, ctx.cache, **options)
    failures += encode_targets(ctx.config.dataset, ctx.layout, lambda: ctx.backbone, ctx.cache, **options)
    views = ctx.augment_views()
    if views:
        support = support_records(ctx)
        view_cache = ctx.view_cache
        if ranks.is_main:
            remove_stale_temporaries(view_cache.dir)
        ranks.barrier()
        if view_cache.missing([view_key(r.sha1, v) for r in support for v in range(views)]):
            failures += extract_views(
                support, ctx.layout.data, ctx.backbone, view_cache, views, AUGMENT_SEED, **options
            )
    if ranks.distributed:
        failures = [failure for part in ranks.gather(failures) for failure in part]
        ctx.cache.refresh()  # the shards the other ranks wrote
        if views:
            ctx.view_cache.refresh()
    if failures and ranks.is_main:
        append_exclusions(ctx.layout, [("features", path, reason) for path, reason in failures])
    ranks.barrier()  # exclusions.csv is written before any rank reads it
    return len(failures)


def _cached_count(cache: FeatureCache, sha1s: list[str]) -> int:
    """How many of ``sha1s`` the cache holds now, shards committed since it was opened included."""
    cache.refresh()
    return len(sha1s) - len(cache.missing(sha1s))


def _fit_key(ctx: RunContext, method: str, train: list[Record], val: list[Record], class_names: list[str]) -> str:
    """Hash of everything a trained head depends on; a changed input retrains, an unchanged one is skipped."""
    payload = {
        "method": method,
        "config": head_config(ctx.config, method).key_values(class_names),
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
    ranks = ctx.ranks
    if ranks.is_main:
        for folder in (ctx.layout.heads, ctx.layout.results / "history"):
            remove_stale_temporaries(folder)  # left by a killed run; a live writer's are kept
    ranks.barrier()
    classes, _, _ = load_prepared(ctx.layout)
    view = train_view(len(classes.readable), ctx.config.splits.subsample)
    class_names = view.names(classes.readable)
    first_epoch = []  # units that kept their first epoch (reported at the end, trained now or before)
    pending = []  # (unit, train records, val records, fit key) of every unit not trained with these inputs
    all_units = list(units(ctx.config))
    for method, shots, seed in all_units:
        train_records, val_records = load_split(ctx.layout, seed, shots) if shots else ([], [])
        train_records = view.select(available(ctx, train_records))
        val_records = view.select(available(ctx, val_records))
        key = _fit_key(ctx, method, train_records, val_records, class_names)
        meta = intact_head_meta(ctx.layout.heads / unit_name(method, shots, seed))  # a damaged head is retrained
        if meta is None or meta.get("fit_key") != key:
            pending.append(((method, shots, seed), train_records, val_records, key))
        elif meta.get("kept_first_epoch"):
            first_epoch.append(f"{unit_name(method, shots, seed)} ({meta.get('selection_rule')})")
    # Bad input (e.g. a prompt too long) fails before any training starts. Only methods with something to
    # train are checked, so a re-run with every head trained never loads the model. Every readable class
    # is checked: heads that transfer meet the new classes of base-to-new at evaluation.
    for method in dict.fromkeys(unit[0] for unit, *_ in pending):
        head = head_class(method)(head_config(ctx.config, method))
        if head.checks_task:  # every text head checks its prompts (contract); a linear probe never loads the model
            backbone = ctx.backbone if head.uses_text else None
            head.check(Task(list(classes.readable), ctx.config.prompts.templates, backbone))

    # torchrun: a unit on cached features is one rank's (dealt round-robin); an encoder-tuning unit is
    # every rank's (DDP). Each unit is seeded by itself, so who trains it changes nothing.
    def shared(unit: tuple[str, int, int]) -> bool:
        return bool(unit[1]) and head_class(unit[0]).tunes_encoders

    alone, together = [u for u in pending if not shared(u[0])], [u for u in pending if shared(u[0])]
    mine = ranks.mine(alone) + together if ranks.distributed else pending
    trained = []
    progress = ctx.progress = Progress(len(all_units), "units trained", done=len(all_units) - len(pending))
    bar = tqdm(mine, desc="train", unit="head", disable=not (ctx.config.output.progress and ranks.is_main))
    for (method, shots, seed), train_records, val_records, key in bar:
        bar.set_postfix_str(unit_name(method, shots, seed))
        stem = ctx.layout.heads / unit_name(method, shots, seed)
        head_cls = head_class(method)
        head = head_cls(head_config(ctx.config, method))
        backbone = ctx.backbone if head_cls.uses_text else None  # a linear probe never loads the model
        checkpoint = stem.with_name(stem.name + ".ckpt.safetensors")
        on_epoch = functools.partial(ctx.on_epoch, unit_name(method, shots, seed)) if ctx.on_epoch else None
        task = Task(
            class_names,
            ctx.config.prompts.templates,
            backbone,
            seed,
            ctx.config.output.progress,
            shots=shots,
            checkpoint=checkpoint,
            on_epoch=on_epoch,
        )
        writes = ranks.is_main or not shared((method, shots, seed))  # a DDP unit's files are rank 0's
        start = time.perf_counter()
        try:
            if shots and head_cls.tunes_encoders:  # trains on the images themselves, not on cached features
                task.workers, task.ranks = ctx.config.model.loader_threads, ranks
                head.fit(task, image_set(ctx, train_records), image_set(ctx, val_records))
            elif shots:
                train_set = feature_set(ctx, train_records)
                views = head.config.augment_views if head.uses_augmented_views else 0
                if views:
                    train_set.views = load_views(ctx.view_cache, train_records, views)
                head.fit(task, train_set, feature_set(ctx, val_records))
            else:
                head.fit(task)
        except TrainingDiverged as err:
            checkpoint.unlink(missing_ok=True)  # its epochs lead to the same divergence
            raise TrainingDiverged(
                err.loss,
                err.epoch,
                err.lr,
                (
                    f"{unit_name(method, shots, seed)}: training diverged: the loss became {err.loss} in epoch "
                    f"{err.epoch} at learning rate {err.lr:g}; lower {method}'s lr (or, with precision bf16/fp16, train "
                    f"in fp32), then re-run the same command. Nothing of this unit was saved; the {len(trained)} unit(s) "
                    f"trained before it in this command are kept"
                ),
            ) from None
        seconds = time.perf_counter() - start
        if not writes:
            continue
        extra = {
            "fit_key": key,
            "method": method,
            "shots": shots,
            "seed": seed,
            "train_seconds": seconds,
            "best_epoch": best_epoch(head),
            "templates": ctx.config.prompts.templates,
            "features_key": ctx.cache.key,
            **fit_meta(head),
        }
        if head.history_:  # before the head: its JSON, written last, is what marks the unit done
            cols = list(head.history_[0])
            write_csv(
                ctx.layout.results / "history" / f"{unit_name(method, shots, seed)}.csv",
                cols,
                ([row.get(c, "") for c in cols] for row in head.history_),
            )
        save_head(head, stem, class_names, extra)
        checkpoint.unlink(missing_ok=True)
        if extra["kept_first_epoch"]:
            first_epoch.append(f"{unit_name(method, shots, seed)} ({extra['selection_rule']})")
        if ctx.on_trained is not None:
            ctx.on_trained(unit_name(method, shots, seed), head.history_)
        accuracy = kept_val_accuracy(head.history_, extra["best_epoch"])
        scored = "" if accuracy is None else f", val accuracy {accuracy:.3f}"
        log.info("trained %s in %.1fs%s", unit_name(method, shots, seed), seconds, scored)
        trained.append(unit_name(method, shots, seed))
        progress.done += 1
    if ranks.distributed:
        trained = sorted({name for names in ranks.gather(trained) for name in names})
        first_epoch = sorted({unit for units_ in ranks.gather(first_epoch) for unit in units_})
        if not ranks.is_main:
            first_epoch = []  # rank 0 says it once
    if first_epoch:
        log.warning(
            "%d unit(s) kept their first epoch's state (training did not beat its start on validation; "
            "check the learning rate and schedule, or set select: last): %s",
            len(first_epoch),
            "; ".join(first_epoch),
        )
    return trained


def evaluate(ctx: RunContext) -> Path:
    """Score every trained head and write the evaluation artifacts (see ``fewclip.runner.evaluation``); rank 0 of
    a torchrun job alone."""
    if not ctx.ranks.is_main:
        return ctx.layout.summary
    return evaluate_run(ctx)


def report(ctx: RunContext) -> Path:
    """Aggregate tables, plots (if output.figures) and report.html, all read from the evaluate stage's CSVs
    (rank 0 of a torchrun job alone)."""
    if not ctx.ranks.is_main:
        return ctx.layout.report
    ctx.write_config()
    return build_report(ctx.layout.root, ctx.config)


STAGES = {"prepare": prepare, "features": features, "train": train, "evaluate": evaluate, "report": report}


def check(config: Config, stages: tuple[str, ...], looked_in: LookedIn) -> None:
    """Before the run directory is touched: the model loads where the stages encode or train, the dataset's
    files exist where they prepare, cache.dir can be a folder where they use it."""
    if "features" in stages or "train" in stages:
        check_backbone(config.model)
    check_paths(config, stages, looked_in)


def outcome(ctx: RunContext, stages: tuple[str, ...]) -> list[str]:
    """What a finished command prints: the results file after evaluate alone; the answer in plain words (the
    report's first sentences, else its headline), the table and the report after a report."""
    lines = [f"results: {ctx.layout.summary}"] if stages == ("evaluate",) else []
    if "report" in stages and ctx.layout.answer.is_file():
        answer = read_json(ctx.layout.answer)
        lines += [
            *(answer.get("plain") or [answer["headline"]]),
            f"table: {ctx.layout.aggregate / 'accuracy_table.csv'}",
        ]
    if "report" in stages and ctx.layout.report.is_file():
        lines.append(f"report: {ctx.layout.report}")
    return lines


CLASSIFICATION = RunTask(
    kind="classification",
    stages=STAGES,
    context=RunContext,
    load_config=load_config,
    embedded_config=embedded_config,
    rules=CLASSIFICATION_RULES,
    folder_config=folder_config,
    is_input_folder=is_image_folder,
    check=check,
    outcome=outcome,
    distributed=True,
    tracked=True,
)


def run(config: Config, force: bool = False) -> Path:
    """Every stage in order, as ``fewclip run`` runs them (tracking included when ``config.wandb`` asks for
    it); each skips what an earlier (possibly killed) run already finished.

    The run directory is claimed and locked for the whole run (see ``fewclip.runner.run_dir``); ``force``
    accepts a config whose run-defining keys differ from the one already there.
    """
    return StageRun(CLASSIFICATION, tuple(STAGES))(config, force=force).layout.summary
