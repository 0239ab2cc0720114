"""The evaluate stage: every trained head on each evaluation view of the test split.

Writes, per (method, shots, seed, split): predictions (CSV + logits), a confusion matrix (CSV + PNG),
the most-confused class pairs, the most confident mistakes, calibration bins with ECE and a reliability
diagram; per method, saliency overlays for a sample of test images; and the run's summary.csv,
per_class.csv and zero_shot_templates.csv.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import calibration_bins, confident_mistakes, confused_pairs, expected_calibration_error
from .data.images import read_image
from .data.prepare import load_prepared
from .data.records import Record
from .data.subsample import eval_views
from .fileio import atomic_write_bytes, write_csv
from .heads import load_head, read_head_meta
from .layout import unit_name
from .metrics import confusion_matrix, per_class, summarize
from .metrics import harmonic_mean
from .stats import wilson_interval
from .run_context import RunContext, available, feature_set, units

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("method", "shots", "seed", "split", "accuracy", "acc_low", "acc_high", "balanced_accuracy",
                   "macro_f1", "ece", "ece_uncalibrated", "trainable_params", "train_seconds", "n_eval", "best_epoch",
                   "selection")


def _save_predictions(path: Path, records: list[Record], logits: torch.Tensor, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.softmax(logits.float(), dim=-1)
    confidence, pred = probs.max(dim=-1)
    write_csv(path.with_suffix(".csv"), ("path", "label", "class_name", "pred", "pred_name", "confidence"),
              ((r.path, r.label, r.class_name, int(p), class_names[int(p)], f"{float(c):.6f}")
               for r, p, c in zip(records, pred, confidence)))
    buffer = io.BytesIO()
    np.save(buffer, logits.float().numpy())
    atomic_write_bytes(path.with_suffix(".logits.npy"), buffer.getvalue())
    return pred.numpy(), confidence.numpy()


def _head_for_view(ctx: RunContext, head: Any, meta: dict[str, Any], names: list[str]) -> Any:
    """The trained head, or its transfer to other class names (base-to-new); None if it cannot."""
    if names == meta["class_names"]:
        if hasattr(head, "attach"):  # prompts that depend on the image need the text tower
            head.attach(ctx.backbone, names)
        return head
    if not hasattr(head, "transfer"):
        return None
    return head.transfer(ctx.backbone, names)


def uncalibrated_ece(logits: torch.Tensor, temperature: float, correct: np.ndarray) -> float:
    """ECE of the head's confidences before temperature scaling (``logits`` are the calibrated ones: * T)."""
    confidence = torch.softmax(logits.float() * temperature, dim=-1).max(dim=-1).values.numpy()
    return expected_calibration_error(calibration_bins(confidence, correct))


def write_unit_artifacts(folder: Path, names: list[str], records: list[Record], truth: np.ndarray, pred: np.ndarray,
                         confidence: np.ndarray, title: str, figures: bool = True) -> float:
    """Confusion matrix, confused pairs, confident mistakes and calibration of one unit; returns ECE."""
    from .report.unit_figures import confusion_png, reliability_png

    matrix = confusion_matrix(truth, pred, len(names))
    write_csv(folder / "confusion.csv", ["true \\ predicted", *names],
              ([names[i], *map(int, row)] for i, row in enumerate(matrix)))
    write_csv(folder / "confused_pairs.csv", ("true", "predicted", "count"),
              ((names[t], names[p], n) for t, p, n in confused_pairs(matrix)))
    write_csv(folder / "mistakes.csv", ("path", "true", "predicted", "confidence"),
              ((records[i].path, names[truth[i]], names[pred[i]], f"{confidence[i]:.6f}")
               for i in confident_mistakes(truth, pred, confidence)))
    bins = calibration_bins(confidence, truth == pred)
    ece = expected_calibration_error(bins)
    write_csv(folder / "calibration.csv", ("lower", "upper", "count", "accuracy", "confidence"),
              ((f"{b['lower']:.4f}", f"{b['upper']:.4f}", b["count"], f"{b['accuracy']:.6f}", f"{b['confidence']:.6f}")
               for b in bins))
    if figures:
        confusion_png(matrix, names, folder / "confusion.png", title)
        reliability_png(bins, ece, folder / "reliability.png", title)
    return ece


def write_saliency(ctx: RunContext, head: Any, method: str, shots: int, seed: int, records: list[Record],
                   names: list[str], count: int) -> None:
    """Gradient-weighted patch-token saliency (``fewclip.saliency``) for ``count`` test images."""
    from .report.unit_figures import image_grid_png
    from .saliency import overlay, patch_saliency

    backbone = ctx.backbone
    step = max(len(records) // count, 1)
    sample = records[::step][:count]
    pixels = torch.from_numpy(np.stack([backbone.transform(read_image(r.resolve(ctx.layout.data))) for r in sample]))
    maps, logits = patch_saliency(backbone, head, pixels)
    pred = logits.argmax(-1).numpy()
    mean, std = np.asarray(backbone.transform.mean), np.asarray(backbone.transform.std)
    shown = [np.clip((px.numpy().transpose(1, 2, 0) * std + mean) * 255, 0, 255).astype(np.uint8) for px in pixels]
    folder = ctx.layout.saliency(method, shots, seed)
    image_grid_png([overlay(img, m) for img, m in zip(shown, maps)],
                   [f"true: {names[r.label]}\npred: {names[p]}" for r, p in zip(sample, pred)], folder / "saliency.png")
    write_csv(folder / "saliency.csv", ("path", "true", "predicted"),
              ((r.path, names[r.label], names[p]) for r, p in zip(sample, pred)))


def evaluate_run(ctx: RunContext) -> Path:
    """Score every trained head on each evaluation view; write every artifact listed in the module doc."""
    ctx.write_config()
    classes, _, all_test = load_prepared(ctx.layout)
    all_test = available(ctx, all_test)
    views = eval_views(len(classes.readable), ctx.config.splits.subsample)
    figures = ctx.config.output.figures
    summary, per_class_rows, template_rows = [], [], []
    warned: set[tuple[str, str]] = set()
    saliency_unit: dict[str, tuple[int, int]] = {}
    for method, shots, seed in units(ctx.config):
        stem = ctx.layout.heads / unit_name(method, shots, seed)
        if read_head_meta(stem) is None:
            log.warning("no trained head %s; run `fewclip train` first", unit_name(method, shots, seed))
            continue
        head, meta = load_head(stem)
        accuracy: dict[str, tuple[float, float, float]] = {}  # split -> accuracy, macro-F1, balanced
        for view in views:
            names, records = view.names(classes.readable), view.select(all_test)
            view_head = _head_for_view(ctx, head, meta, names)
            if view_head is None:
                if (method, view.split) not in warned:
                    log.warning("%s cannot classify classes it was not trained on; no %s rows", method, view.split)
                    warned.add((method, view.split))
                continue
            test = feature_set(ctx, records)
            logits = view_head.logits(test.features)
            pred, confidence = _save_predictions(
                ctx.layout.predictions / f"{unit_name(method, shots, seed)}-{view.split}", records, logits, names)
            truth = test.labels.numpy()
            scores = summarize(truth, pred, len(names))
            accuracy[view.split] = (scores["accuracy"], scores["macro_f1"], scores["balanced_accuracy"])
            title = f"{method}, {shots} shots, seed {seed}, {view.split}"
            ece = write_unit_artifacts(ctx.layout.unit_results(method, shots, seed, view.split), names, records, truth,
                                       pred, confidence, title, figures)
            ece_raw = uncalibrated_ece(logits, float(meta.get("temperature") or 1.0), truth == pred)
            low, high = wilson_interval(int((truth == pred).sum()), len(truth))  # 95% over test images
            summary.append((method, shots, seed, view.split, f"{scores['accuracy']:.6f}", f"{low:.6f}", f"{high:.6f}",
                            f"{scores['balanced_accuracy']:.6f}", f"{scores['macro_f1']:.6f}", f"{ece:.6f}",
                            f"{ece_raw:.6f}", meta["trainable_params"], f"{meta['train_seconds']:.3f}", len(test),
                            meta.get("best_epoch") or "", meta.get("selection_rule") or ""))
            stats = per_class(confusion_matrix(truth, pred, len(names)))
            per_class_rows += [(method, shots, seed, view.split, names[c], f"{stats['precision'][c]:.6f}",
                                f"{stats['recall'][c]:.6f}", f"{stats['f1'][c]:.6f}", int(stats["support"][c]))
                               for c in range(len(names))]
            if hasattr(view_head, "template_logits"):
                for template, t_logits in zip(view_head.templates_, view_head.template_logits(test.features)):
                    t_scores = summarize(truth, t_logits.argmax(-1).numpy(), len(names))
                    template_rows.append((view.split, template, f"{t_scores['accuracy']:.6f}", f"{t_scores['macro_f1']:.6f}"))
                template_rows.append((view.split, "<ensemble>", f"{scores['accuracy']:.6f}", f"{scores['macro_f1']:.6f}"))
            if view is views[0] and (method not in saliency_unit or shots > saliency_unit[method][0]
                                     or (shots == saliency_unit[method][0] and seed < saliency_unit[method][1])):
                saliency_unit[method] = (shots, seed)
        if "base" in accuracy and "new" in accuracy:
            (acc_b, f1_b, bal_b), (acc_n, f1_n, bal_n) = accuracy["base"], accuracy["new"]
            summary.append((method, shots, seed, "hm", f"{harmonic_mean(acc_b, acc_n):.6f}", "", "",
                            f"{harmonic_mean(bal_b, bal_n):.6f}", f"{harmonic_mean(f1_b, f1_n):.6f}", "", "",
                            meta["trainable_params"], f"{meta['train_seconds']:.3f}", "", meta.get("best_epoch") or "",
                            meta.get("selection_rule") or ""))
    results = ctx.layout.results
    write_csv(ctx.layout.summary, SUMMARY_COLUMNS, summary)
    write_csv(results / "per_class.csv", ("method", "shots", "seed", "split", "class_name", "precision", "recall",
                                          "f1", "support"), per_class_rows)
    if template_rows:
        write_csv(results / "zero_shot_templates.csv", ("split", "template", "accuracy", "macro_f1"), template_rows)
    if figures and ctx.config.output.saliency_images:
        view = views[0]
        names, records = view.names(classes.readable), view.select(all_test)
        for method, (shots, seed) in saliency_unit.items():
            head, meta = load_head(ctx.layout.heads / unit_name(method, shots, seed))
            write_saliency(ctx, _head_for_view(ctx, head, meta, names), method, shots, seed, records, names,
                           ctx.config.output.saliency_images)
    return ctx.layout.summary
