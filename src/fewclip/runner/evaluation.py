"""The evaluate stage: every trained head on each evaluation view of the test split.

Writes, per (method, shots, seed, split): predictions (CSV + logits), a confusion matrix (CSV + PNG),
the most-confused class pairs, the most confident mistakes, calibration bins with ECE and a reliability
diagram; per method, saliency overlays for a sample of test images; and the run's summary.csv,
per_class.csv and zero_shot_templates.csv.

Like training, evaluation skips what is done: each unit's rows are stored with a key over everything
they depend on (``results/units/<method>/shot_K-seed_S.eval.json``), and the run's tables are assembled
from those per-unit records, so a re-run with unchanged heads, test set and settings recomputes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fewclip.runner.analysis import calibration_bins, confident_mistakes, confused_pairs, expected_calibration_error
from fewclip.data.images import read_image
from fewclip.data.prepare import load_prepared
from fewclip.data.records import Record
from fewclip.data.sources import dataset_label
from fewclip.data.subsample import eval_views, train_view
from fewclip.fileio import atomic_write_bytes, read_csv, read_json, write_csv, write_json
from fewclip.heads import load_head, read_head_meta
from fewclip.runner.layout import unit_name
from fewclip.metrics import confusion_matrix, per_class, summarize
from fewclip.metrics import harmonic_mean
from fewclip.stats import wilson_interval
from fewclip.report.unit_figures import confusion_png, image_grid_png, reliability_png
from fewclip.runner.run_context import RunContext, available, feature_set, units
from fewclip.saliency import overlay, patch_saliency
from fewclip.heads.subset import ClassSubset
from fewclip.data.eval_targets import subset_columns, target_summary, target_view, targets, write_targets

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "method",
    "shots",
    "seed",
    "split",
    "accuracy",
    "acc_low",
    "acc_high",
    "balanced_accuracy",
    "macro_f1",
    "ece",
    "ece_uncalibrated",
    "trainable_params",
    "train_seconds",
    "n_eval",
    "best_epoch",
    "selection",
)
PER_CLASS_COLUMNS = ("method", "shots", "seed", "split", "class_name", "precision", "recall", "f1", "support")
TEMPLATE_COLUMNS = ("split", "template", "accuracy", "macro_f1")
# Bump when the evaluation code changes what it writes for the same inputs: every stored unit is redone.
EVALUATION_VERSION = "3"


def _save_predictions(
    path: Path, records: list[Record], logits: torch.Tensor, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.softmax(logits.float(), dim=-1)
    confidence, pred = probs.max(dim=-1)
    write_csv(
        path.with_suffix(".csv"),
        ("path", "label", "class_name", "pred", "pred_name", "confidence"),
        (
            (r.path, r.label, r.class_name, int(p), class_names[int(p)], f"{float(c):.6f}")
            for r, p, c in zip(records, pred, confidence)
        ),
    )
    buffer = io.BytesIO()
    np.save(buffer, logits.float().numpy())
    atomic_write_bytes(path.with_suffix(".logits.npy"), buffer.getvalue())
    return pred.numpy(), confidence.numpy()


def _head_for_view(ctx: RunContext, head: Any, meta: dict[str, Any], names: list[str]) -> Any:
    """The trained head; its logits at some of its classes (an eval_on target of the same classes, e.g.
    ImageNet-A's 200 of ImageNet); or its transfer to other class names (base-to-new, cross-dataset);
    None if it cannot."""
    if names == meta["class_names"]:
        if head.needs_text_at_predict:  # prompts that depend on the image need the text tower
            head.attach(ctx.backbone, names)
        return head
    columns = subset_columns(meta["class_names"], names)
    if columns is not None:
        return ClassSubset(_head_for_view(ctx, head, meta, meta["class_names"]), columns)
    if not head.transfers:
        return None
    return head.transfer(ctx.backbone, names)


def tuned_logits(ctx: RunContext, head: Any, records: list[Record]) -> torch.Tensor:
    """(n, C) logits of a ``tunes_encoders`` head: the test images through its own tuned towers, in memory
    (these features depend on the head, so they never enter the shared cache of the frozen model)."""
    chunks, size = [], ctx.config.model.batch_size
    for start in range(0, len(records), size):
        batch = records[start : start + size]
        pixels = np.stack([ctx.backbone.transform(read_image(r.resolve(ctx.layout.data))) for r in batch])
        chunks.append(head.image_logits(torch.from_numpy(pixels)))
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def uncalibrated_ece(logits: torch.Tensor, temperature: float, correct: np.ndarray) -> float:
    """ECE of the head's confidences before temperature scaling (``logits`` are the calibrated ones: * T)."""
    confidence = torch.softmax(logits.float() * temperature, dim=-1).max(dim=-1).values.numpy()
    return expected_calibration_error(calibration_bins(confidence, correct))


def write_unit_artifacts(
    folder: Path,
    names: list[str],
    records: list[Record],
    truth: np.ndarray,
    pred: np.ndarray,
    confidence: np.ndarray,
) -> float:
    """Confusion matrix, confused pairs, confident mistakes and calibration of one unit; returns ECE. Their
    figures are drawn for the units the report shows (``unit_figures``), not here."""
    matrix = confusion_matrix(truth, pred, len(names))
    write_csv(
        folder / "confusion.csv",
        ["true \\ predicted", *names],
        ([names[i], *map(int, row)] for i, row in enumerate(matrix)),
    )
    write_csv(
        folder / "confused_pairs.csv",
        ("true", "predicted", "count"),
        ((names[t], names[p], n) for t, p, n in confused_pairs(matrix)),
    )
    write_csv(
        folder / "mistakes.csv",
        ("path", "true", "predicted", "confidence"),
        (
            (records[i].path, names[truth[i]], names[pred[i]], f"{confidence[i]:.6f}")
            for i in confident_mistakes(truth, pred, confidence)
        ),
    )
    bins = calibration_bins(confidence, truth == pred)
    ece = expected_calibration_error(bins)
    write_csv(
        folder / "calibration.csv",
        ("lower", "upper", "count", "accuracy", "confidence"),
        (
            (f"{b['lower']:.4f}", f"{b['upper']:.4f}", b["count"], f"{b['accuracy']:.6f}", f"{b['confidence']:.6f}")
            for b in bins
        ),
    )
    return ece


def unit_figures(folder: Path, title: str, ece: float) -> None:
    """confusion.png and reliability.png of one unit's view, from its confusion.csv and calibration.csv; skipped
    when both figures are newer than their tables. Drawn for the unit of each method the report shows in detail
    (the largest budget, its smallest seed: the one with saliency maps), not for every unit: matplotlib takes
    about a quarter of a second per unit, most of the evaluate stage on small runs."""
    tables, pngs = (
        (folder / "confusion.csv", folder / "calibration.csv"),
        (folder / "confusion.png", folder / "reliability.png"),
    )
    newest = max(path.stat().st_mtime_ns for path in tables)
    if all(png.is_file() and png.stat().st_mtime_ns >= newest for png in pngs):
        return
    rows = read_csv(tables[0])
    names = list(rows[0])[1:] if rows else []
    matrix = np.array([[int(row[name]) for name in names] for row in rows], dtype=np.int64).reshape(len(rows), -1)
    bins = [{key: float(value) for key, value in row.items()} for row in read_csv(tables[1])]
    confusion_png(matrix, names, pngs[0], title)
    reliability_png(bins, ece, pngs[1], title)


def write_saliency(
    ctx: RunContext, head: Any, method: str, shots: int, seed: int, records: list[Record], names: list[str], count: int
) -> None:
    """Gradient-weighted patch-token saliency (``fewclip.saliency``) for ``count`` test images."""
    backbone = ctx.backbone
    step = max(len(records) // count, 1)
    sample = records[::step][:count]
    pixels = torch.from_numpy(np.stack([backbone.transform(read_image(r.resolve(ctx.layout.data))) for r in sample]))
    maps, logits = patch_saliency(backbone, head, pixels)
    pred = logits.argmax(-1).numpy()
    mean, std = np.asarray(backbone.transform.mean), np.asarray(backbone.transform.std)
    shown = [np.clip((px.numpy().transpose(1, 2, 0) * std + mean) * 255, 0, 255).astype(np.uint8) for px in pixels]
    folder = ctx.layout.saliency(method, shots, seed)
    image_grid_png(
        [overlay(img, m) for img, m in zip(shown, maps)],
        [f"true: {names[r.label]}\npred: {names[p]}" for r, p in zip(sample, pred)],
        folder / "saliency.png",
    )
    write_csv(
        folder / "saliency.csv",
        ("path", "true", "predicted"),
        ((r.path, names[r.label], names[p]) for r, p in zip(sample, pred)),
    )


def file_digest(*paths: Path) -> str:
    """sha256 over the bytes of ``paths`` (a head's tensors and JSON): any change to a saved head shows."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _head_digest(stem: Path) -> str:
    return file_digest(stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json"))


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def evaluation_key(ctx: RunContext, head_digest: str, views: list[tuple[str, list[str], list[Record]]]) -> str:
    """Hash of everything a unit's evaluation outputs depend on: the saved head, the features, each view's
    class names and test images, the figure setting, the columns written and the evaluation code version."""
    return _key(
        {
            "version": EVALUATION_VERSION,
            "columns": [SUMMARY_COLUMNS, PER_CLASS_COLUMNS, TEMPLATE_COLUMNS],
            "head": head_digest,
            "features": ctx.cache.key,
            "views": [(split, names, [r.sha1 for r in records]) for split, names, records in views],
            "figures": ctx.config.output.figures,
        }
    )


def summary_row(
    method: str,
    shots: int,
    seed: int,
    split: str,
    scores: dict[str, float],
    meta: dict[str, Any],
    n_eval: int | None = None,
    ece: tuple[float, float] | None = None,
    interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """One row of summary.csv (columns: ``SUMMARY_COLUMNS``); the one place its columns are built.

    ``ece`` is (calibrated, uncalibrated); ``interval`` the 95% Wilson interval of the accuracy. Both are
    absent on the harmonic-mean rows of base-to-new, which summarise two test sets.
    """

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    return {
        "method": method,
        "shots": shots,
        "seed": seed,
        "split": split,
        "accuracy": number(scores["accuracy"]),
        "acc_low": number(interval and interval[0]),
        "acc_high": number(interval and interval[1]),
        "balanced_accuracy": number(scores["balanced_accuracy"]),
        "macro_f1": number(scores["macro_f1"]),
        "ece": number(ece and ece[0]),
        "ece_uncalibrated": number(ece and ece[1]),
        "trainable_params": meta["trainable_params"],
        "train_seconds": f"{meta['train_seconds']:.3f}",
        "n_eval": "" if n_eval is None else n_eval,
        "best_epoch": meta.get("best_epoch") or "",
        "selection": meta.get("selection_rule") or "",
    }


def _evaluate_view(
    ctx: RunContext,
    unit: tuple[str, int, int],
    head: Any,
    meta: dict[str, Any],
    split: str,
    names: list[str],
    records: list[Record],
    record: dict[str, Any],
) -> dict[str, float]:
    """Predictions, per-unit artifacts and every table row of one head on one view; returns its scores."""
    method, shots, seed = unit
    test = feature_set(ctx, records)
    logits = tuned_logits(ctx, head, records) if head.tunes_encoders else head.logits(test.features)
    prediction_stem = ctx.layout.predictions / f"{unit_name(method, shots, seed)}-{split}"
    pred, confidence = _save_predictions(prediction_stem, records, logits, names)
    truth = test.labels.numpy()
    scores = summarize(truth, pred, len(names))
    ece = write_unit_artifacts(
        ctx.layout.unit_results(method, shots, seed, split),
        names,
        records,
        truth,
        pred,
        confidence,
    )
    ece_raw = uncalibrated_ece(logits, float(meta.get("temperature") or 1.0), truth == pred)
    interval = wilson_interval(int((truth == pred).sum()), len(truth))  # 95% over test images
    record["summary"].append(summary_row(method, shots, seed, split, scores, meta, len(test), (ece, ece_raw), interval))
    stats = per_class(confusion_matrix(truth, pred, len(names)))
    record["per_class"] += [
        dict(
            zip(
                PER_CLASS_COLUMNS,
                (
                    method,
                    shots,
                    seed,
                    split,
                    names[c],
                    f"{stats['precision'][c]:.6f}",
                    f"{stats['recall'][c]:.6f}",
                    f"{stats['f1'][c]:.6f}",
                    int(stats["support"][c]),
                ),
            )
        )
        for c in range(len(names))
    ]
    if head.per_template_scores:
        for template, t_logits in zip(head.templates_, head.template_logits(test.features)):
            t_scores = summarize(truth, t_logits.argmax(-1).numpy(), len(names))
            record["templates"].append(
                dict(
                    zip(
                        TEMPLATE_COLUMNS,
                        (split, template, f"{t_scores['accuracy']:.6f}", f"{t_scores['macro_f1']:.6f}"),
                    )
                )
            )
        record["templates"].append(
            dict(zip(TEMPLATE_COLUMNS, (split, "<ensemble>", f"{scores['accuracy']:.6f}", f"{scores['macro_f1']:.6f}")))
        )
    written = [
        prediction_stem.with_suffix(".csv"),
        prediction_stem.with_suffix(".logits.npy"),
        ctx.layout.unit_results(method, shots, seed, split) / "confusion.csv",
    ]
    record["files"] += [path.relative_to(ctx.layout.root).as_posix() for path in written]
    return scores


def evaluate_unit(
    ctx: RunContext,
    unit: tuple[str, int, int],
    views: list[tuple[str, list[str], list[Record]]],
    key: str,
    warned: set[tuple[str, str]],
) -> dict[str, Any]:
    """Evaluate one saved head on every view it can classify; returns its stored record (key and rows)."""
    method, shots, seed = unit
    head, meta = load_head(ctx.layout.heads / unit_name(method, shots, seed))
    record: dict[str, Any] = {"key": key, "splits": [], "summary": [], "per_class": [], "templates": [], "files": []}
    scores: dict[str, dict[str, float]] = {}
    for split, names, records in views:
        view_head = _head_for_view(ctx, head, meta, names)
        if view_head is None:
            if (method, split) not in warned:
                log.info("%s cannot classify classes it was not trained on; no %s rows (by design)", method, split)
                warned.add((method, split))
            continue
        scores[split] = _evaluate_view(ctx, unit, view_head, meta, split, names, records, record)
        record["splits"].append(split)
    if "base" in scores and "new" in scores:
        hm = {
            m: harmonic_mean(scores["base"][m], scores["new"][m]) for m in ("accuracy", "macro_f1", "balanced_accuracy")
        }
        record["summary"].append(summary_row(method, shots, seed, "hm", hm, meta))
    return record


def _stored(root: Path, path: Path, key: str) -> dict[str, Any] | None:
    """The unit's stored evaluation if its key matches and the files it wrote are still there."""
    try:
        record = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None  # unreadable: evaluate again
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    return record if all((root / f).is_file() for f in record.get("files", [])) else None


def _saliency(ctx: RunContext, unit: tuple[str, int, int], view: tuple[str, list[str], list[Record]]) -> None:
    """Saliency overlays of one unit, skipped when the head, the sampled images and the count are unchanged."""
    method, shots, seed = unit
    split, names, records = view
    count = ctx.config.output.saliency_images
    stem = ctx.layout.heads / unit_name(method, shots, seed)
    folder = ctx.layout.saliency(method, shots, seed)
    key = _key(
        {
            "version": EVALUATION_VERSION,
            "head": _head_digest(stem),
            "names": names,
            "count": count,
            "images": [r.sha1 for r in records],
        }
    )
    stamp = folder / "saliency.json"
    if (folder / "saliency.png").is_file() and stamp.is_file() and read_json(stamp).get("key") == key:
        return
    head, meta = load_head(stem)
    write_saliency(ctx, _head_for_view(ctx, head, meta, names), method, shots, seed, records, names, count)
    write_json(stamp, {"key": key})


def evaluate_run(ctx: RunContext) -> Path:
    """Score every trained head on each evaluation view; write every artifact listed in the module doc.

    A unit whose stored key matches (see ``evaluation_key``) is not evaluated again: its stored rows are used.
    """
    ctx.write_config()
    classes, _, all_test = load_prepared(ctx.layout)
    all_test = available(ctx, all_test)
    views = [
        (v.split, v.names(classes.readable), v.select(all_test))
        for v in eval_views(len(classes.readable), ctx.config.splits.subsample)
    ]
    target_views = [target_view(t) for t in targets(ctx.config.dataset, ctx.layout)]
    views += [(label, names, available(ctx, test)) for label, names, test in target_views]
    evaluated: dict[str, set[str]] = {}  # method -> the views some unit of it was scored on
    records: list[dict[str, Any]] = []
    warned: set[tuple[str, str]] = set()
    saliency_unit: dict[str, tuple[int, int]] = {}
    bar = tqdm(list(units(ctx.config)), desc="evaluate", unit="head", disable=not ctx.config.output.progress)
    for unit in bar:
        method, shots, seed = unit
        bar.set_postfix_str(unit_name(method, shots, seed))
        stem = ctx.layout.heads / unit_name(method, shots, seed)
        if read_head_meta(stem) is None:
            log.warning("no trained head %s; run `fewclip train` first", unit_name(method, shots, seed))
            continue
        key = evaluation_key(ctx, _head_digest(stem), views)
        store = ctx.layout.unit_evaluation(method, shots, seed)
        start = time.perf_counter()
        record = _stored(ctx.layout.root, store, key)
        if record is None:
            record = evaluate_unit(ctx, unit, views, key, warned)
            write_json(store, record)
            log.info(
                "evaluated %s in %.1fs: %s",
                unit_name(method, shots, seed),
                time.perf_counter() - start,
                _scores(record),
            )
        else:
            log.info("evaluated %s before: %s", unit_name(method, shots, seed), _scores(record))
        records.append(record)
        evaluated.setdefault(method, set()).update(record["splits"])
        best = saliency_unit.get(method)
        if views[0][0] in record["splits"] and (
            best is None or shots > best[0] or (shots == best[0] and seed < best[1])
        ):
            saliency_unit[method] = (shots, seed)
    bar.close()
    trained_names = train_view(len(classes.readable), ctx.config.splits.subsample).names(classes.readable)
    write_targets(
        ctx.layout,
        [
            target_summary(
                dataset_label(ctx.config.dataset),
                trained_names,
                view,
                [m for m, seen in evaluated.items() if view[0] not in seen],
            )
            for view in target_views
        ],
    )
    results = ctx.layout.results
    write_csv(ctx.layout.summary, SUMMARY_COLUMNS, _table(records, "summary", SUMMARY_COLUMNS))
    write_csv(results / "per_class.csv", PER_CLASS_COLUMNS, _table(records, "per_class", PER_CLASS_COLUMNS))
    template_rows = _table(records, "templates", TEMPLATE_COLUMNS)
    if template_rows:
        write_csv(results / "zero_shot_templates.csv", TEMPLATE_COLUMNS, template_rows)
    if ctx.config.output.figures:
        for record in records:
            unit = (
                record["summary"][0]["method"],
                int(record["summary"][0]["shots"]),
                int(record["summary"][0]["seed"]),
            )
            if saliency_unit.get(unit[0]) == unit[1:]:
                for row in record["summary"]:
                    if row["ece"]:  # a view scored on its own test set (not the harmonic-mean row)
                        title = f"{unit[0]}, {unit[1]} shots, seed {unit[2]}, {row['split']}"
                        unit_figures(ctx.layout.unit_results(*unit, row["split"]), title, float(row["ece"]))
    if ctx.config.output.figures and ctx.config.output.saliency_images:
        for method, (shots, seed) in saliency_unit.items():
            _saliency(ctx, (method, shots, seed), views[0])
    return ctx.layout.summary


def _scores(record: dict[str, Any]) -> str:
    """``test accuracy 0.812`` (one per view a unit was scored on: ``base accuracy 0.9, new accuracy 0.7, ...``),
    for the line said as a unit is evaluated."""
    scored = ", ".join(f"{row['split']} accuracy {float(row['accuracy']):.3f}" for row in record["summary"])
    return scored or "no view it can classify"


def _table(records: list[dict[str, Any]], table: str, columns: tuple[str, ...]) -> list[list[Any]]:
    return [[row.get(c, "") for c in columns] for record in records for row in record[table]]
