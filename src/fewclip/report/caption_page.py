"""The captioning run's ``report.html``: self-contained (PNGs as data URIs, inline CSS, no script) and escaped,
built with the classification report's helpers (``report.html``). Every number is read from the run's
files: ``results/caption_summary.csv`` (the methods table), ``results/history`` (training curves, drawn
into ``results/caption_curves.png``), ``results/predictions`` (example captions, per-image CIDEr for the
winner test, see ``fewclip.report.caption_answer``) and ``results/attention``.

``results/attention/<method>/seed_<S>/attention.json`` (written by the pipeline, read here)::

    {"layer": -1,                        # the decoder block whose cross-attention the panels show
     "images": [{"image": "00012.png",   # as in the predictions CSV's image column
                 "why": "highest clipscore" | "lowest clipscore" | "fixed",
                 "caption": "a red circle ...", "clipscore": 0.81,
                 "panel": "00012.png"}]} # a PNG file name inside that folder (no sub-folders)

Predictions' ``image`` is the image's ``file_name`` in ``data/<split>.json``; its thumbnail is read from
that file's ``path`` field when it has one (relative to ``data/``), else from ``file_name`` as prepare writes
it (relative to the run directory, or absolute), else ``data/<file_name>`` or ``data/images/<file_name>``
(COCO-style names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fewclip.fileio import atomic_write_bytes, read_csv, read_json
from fewclip.report.caption_answer import (
    ALPHA,
    METRIC_NAMES,
    METRICS,
    CaptionAnswer,
    MethodRow,
    method_rows,
    optional_float,
    write_caption_answer,
)
from fewclip.report.caption_first_screen import caption_first_screen_html, headline_png
from fewclip.report.figures import method_colours
from fewclip.report.html_kit import CSS, ArtifactPage, esc, table, thumbnail
from fewclip.report.unit_figures import png_bytes, pyplot
from fewclip.runner.caption_config import BASELINE
from fewclip.runner.layout import REFERENCE_SEPARATOR, CaptionLayout

CURVES_FILE = "caption_curves.png"  # in results/
HEADLINE_FILE = "caption_headline.png"  # in results/: the first screen's figure
EXAMPLE_IMAGES = 6
WHY = ("highest clipscore", "lowest clipscore", "fixed")


class CaptionPage(ArtifactPage):
    """Embeds the caption run's files and records which expected ones it did not find."""

    def __init__(self, layout: CaptionLayout) -> None:
        super().__init__(layout.root)
        self.layout = layout


def value_text(mean: float | None, std: float | None, digits: int = 3) -> str:
    return "—" if mean is None else f"{mean:.{digits}f} ± {(std or 0.0):.{digits}f}"


# --- sections ------------------------------------------------------------------------------------------------


def answer_section(answer: CaptionAnswer) -> str:
    rule = (
        f"Rule: the method with the highest mean CIDEr is named the winner only if a paired sign-flip test on "
        f"per-image CIDEr (seed-averaged per image, computed from the predictions CSVs) finds it better than "
        f"every other method, the untrained baseline included, at alpha = {ALPHA}; otherwise the leading "
        f"methods are called indistinguishable on this test set."
    )
    rows = [
        [
            esc(c.other),
            f"{c.test.difference:+.3f}",
            f"{c.test.p_value:.3g}",
            f"{c.test.better} / {c.test.worse}",
            str(c.test.n_images),
        ]
        if c.test is not None
        else [esc(c.other), "—", "—", "—", "no predictions"]
        for c in answer.comparisons
    ]
    tests = (
        f"<p>{esc(answer.leader)} against each other method:</p>"
        + table(["other method", "CIDEr difference", "p", "images better / worse", "images"], rows, "tests")
        if rows
        else ""
    )
    return f'<p class="headline">{esc(answer.headline)}</p><p class="note">{esc(rule)}</p>{tests}'


def methods_table(rows: Sequence[MethodRow], answer: CaptionAnswer) -> str:
    body = []
    for row in rows:
        mark = ' <b class="winner">best</b>' if row.method == answer.winner and row.split == answer.split else ""
        cells = [esc(row.method) + mark]
        cells += [
            f'<span class="cap" data-method="{esc(row.method)}" data-metric="{m}">'
            f"{value_text(row.mean[m], row.std[m])}</span>"
            for m in METRICS
        ]
        cells += [
            f"{row.trainable_params:,}",
            f'<span class="cap" data-method="{esc(row.method)}" data-metric="train_seconds">'
            f"{value_text(row.mean['train_seconds'], row.std['train_seconds'], 1)}</span>",
            str(len(row.seeds)),
            str(row.n_eval),
        ]
        body.append(cells)
    header = ["method", *(METRIC_NAMES[m] for m in METRICS), "trainable params", "train time (s)", "seeds", "n_eval"]
    return table(header, body, "caption-methods")


def methods_section(summary: list[dict[str, str]], answer: CaptionAnswer) -> str:
    splits = sorted(dict.fromkeys(r["split"] for r in summary), key=lambda s: s != "test")
    parts = [
        "<p>Mean ± sample std over seeds (± 0 with one seed). CIDEr is CIDEr-D as the COCO caption "
        "evaluation computes it; CLIPScore = 2.5 max(cos, 0) and RefCLIPScore as Hessel et al. 2021. "
        f"{esc(BASELINE)} is the decoder with fresh cross-attention and no tuning.</p>"
    ]
    for split in splits:
        parts.append(f"<h3>{esc(split)} split</h3>" + methods_table(method_rows(summary, split), answer))
    return "".join(parts)


def histories(page: CaptionPage, summary: list[dict[str, str]]) -> dict[str, list[list[dict[str, str]]]]:
    units = dict.fromkeys((r["method"], int(r["seed"])) for r in summary if r["method"] != BASELINE)
    found: dict[str, list[list[dict[str, str]]]] = {}
    for method, seed in units:
        rows = page.csv(page.layout.history(method, seed))
        if rows:
            found.setdefault(method, []).append(rows)
    return found


def curves_png(curves: dict[str, list[list[dict[str, str]]]], path: Path, colours: dict[str, str]) -> Path:
    """Two panels, validation CIDEr and training loss per epoch: per method (in its colour) the mean over seeds,
    the seeds' range shaded."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, runs in curves.items():
        colour = colours.get(method, "black")
        for axis, column in zip(axes, ("val_cider", "train_loss")):
            epochs = min(len(run) for run in runs)
            values = np.array([[float(r[column]) if r.get(column) else np.nan for r in run[:epochs]] for run in runs])
            x = [int(float(r["epoch"])) for r in runs[0][:epochs]]
            axis.plot(x, np.nanmean(values, axis=0), marker="o", color=colour, label=method)
            if len(runs) > 1:
                axis.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=colour, alpha=0.2)
    for axis, title in zip(axes, ("validation CIDEr", "training loss")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    write_if_changed(path, png_bytes(figure))
    return path


def curves_section(page: CaptionPage, summary: list[dict[str, str]], colours: dict[str, str]) -> str:
    curves = histories(page, summary)
    if not curves:
        return '<p class="note">No per-epoch history (no trained method, or its history files are absent).</p>'
    path = curves_png(curves, page.layout.results / CURVES_FILE, colours)
    return (
        "<p>Validation CIDEr (used to select the epoch) and training loss per epoch; mean over seeds, "
        "the seeds' range shaded.</p>" + page.image(path, "caption training curves")
    )


def image_files(layout: CaptionLayout, split: str) -> dict[str, Path]:
    """file_name in data/<split>.json -> the image file (the first of the places in the module doc that
    holds it; the first place when none does)."""
    if not layout.split_file(split).is_file():
        return {}
    files = {}
    for entry in read_json(layout.split_file(split)).get("images", []):
        name = str(entry.get("file_name", ""))
        candidates = [layout.data / str(entry["path"])] if entry.get("path") else []  # an absolute path stays as is
        # prepare's file_name is relative to the run directory (``splits.stored_path``), like the attention
        # panels' images; an absolute one stays as is
        candidates += [layout.root / name, layout.data / name, layout.data / "images" / name]
        files[name] = next((c for c in candidates if c.is_file()), candidates[0])
    return files


Predictions = dict[str, dict[str, dict[str, str]]]  # method -> image -> its row of the predictions CSV


def first_seed_predictions(page: CaptionPage, answer: CaptionAnswer) -> Predictions:
    """Each method's predictions on the answer's split, from its first seed (a missing file is recorded)."""
    split = answer.split or "test"
    predictions: Predictions = {}
    for row in answer.rows:
        rows = page.csv(page.layout.predictions(row.method, row.seeds[0], split))
        if rows is not None:
            predictions[row.method] = {r["image"]: r for r in rows}
    return predictions


def caption_cell(row: dict[str, str] | None) -> str:
    if row is None:
        return "—"
    score = optional_float(row.get("clipscore"))
    return esc(row["caption"]) + (f'<br><span class="note">CLIPScore {score:.3f}</span>' if score is not None else "")


def examples_section(page: CaptionPage, answer: CaptionAnswer, predictions: Predictions) -> str:
    """The first test images of the predictions, each method's caption (its first seed) beside the references."""
    if not predictions:
        return '<p class="note">No predictions to show.</p>'
    images = list(next(iter(predictions.values())))[:EXAMPLE_IMAGES]
    files = image_files(page.layout, answer.split or "test")
    body = []
    for image in images:
        first = next(p[image] for p in predictions.values() if image in p)
        references = "<br>".join(esc(r) for r in first["references"].split(REFERENCE_SEPARATOR))
        cells = [thumbnail(files.get(image, page.layout.root / image)) + f"<br>{esc(image)}", references]
        cells += [caption_cell(predictions[method].get(image)) for method in predictions]
        body.append(cells)
    header = ["image", "references", *(esc(m) for m in predictions)]
    return (
        "<p>Generated captions (greedy or beam as configured; each method's first seed) next to the "
        "references.</p>" + table(header, body, "examples", text_columns=tuple(range(len(header))))
    )


def up_front_method(page: CaptionPage, answer: CaptionAnswer) -> str | None:
    """Whose attention panels open the examples: the leader's, else the best-CIDEr trained method's that has them."""
    order = sorted(
        (r for r in answer.rows if r.method != BASELINE),
        key=lambda r: (r.method != answer.leader, -(r.mean["cider"] or 0.0)),
    )
    return next(
        (r.method for r in order if (page.layout.attention_dir(r.method, r.seeds[0]) / "attention.json").is_file()),
        None,
    )


UpFront = tuple[str | None, set[str]]  # whose attention panels the examples up front show, and which ones


def examples_up_front(page: CaptionPage, answer: CaptionAnswer, predictions: Predictions) -> tuple[str, UpFront]:
    """The leading method's attention panels on its highest- and lowest-CLIPScore test images and one fixed image,
    each with every method's caption of that image and the references; returns the HTML and the panels shown."""
    method = up_front_method(page, answer)
    if method is None:
        note = '<p class="note">No attention maps to show; the example captions are in the sections below.</p>'
        return note, (None, set())
    seed = answer.row(method).seeds[0]
    folder = page.layout.attention_dir(method, seed)
    try:
        _, entries = attention_entries(folder)
    except (ValueError, OSError):
        return '<p class="note">No usable attention maps (see "Word-by-word attention" below).</p>', (method, set())
    chosen: dict[str, dict[str, Any]] = {}
    for why in WHY:  # highest, lowest, then the first fixed image
        found = next((e for e in entries if e["why"].startswith(why) and e["panel"] not in chosen), None)
        if found is not None:
            chosen[found["panel"]] = found
    parts = [
        f"<p>{esc(method)}'s cross-attention (seed {seed}) from each generated word to the image, on its highest- "
        "and lowest-CLIPScore test images and a fixed one, with every method's caption of that image.</p>"
    ]
    for entry in chosen.values():
        image = str(entry["image"])
        rows = [[esc(m), caption_cell(by_image.get(image))] for m, by_image in predictions.items()]
        first = next((by_image[image] for by_image in predictions.values() if image in by_image), None)
        if first is not None:
            references = "<br>".join(esc(r) for r in first["references"].split(REFERENCE_SEPARATOR))
            rows.append(["references", f'<span class="note">{references}</span>'])
        parts.append(
            f'<div class="example"><p><b>{esc(entry["why"])}</b>: {esc(image)}</p>'
            + page.image(folder / entry["panel"], f"{method} attention on {image}")
            + table(["method", "caption"], rows, "example-captions", text_columns=(0, 1))
            + "</div>"
        )
    return "".join(parts), (method, set(chosen))


def attention_entries(folder: Path) -> tuple[int | None, list[dict[str, Any]]]:
    """attention.json's layer and image entries, checked (see the module docstring); ValueError names the problem."""
    data = read_json(folder / "attention.json")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError('expected {"layer": int, "images": [...]}')
    for index, entry in enumerate(data["images"]):
        if "why" not in entry and isinstance(entry.get("roles"), list):  # the pipeline's form: roles, one or several
            entry["why"] = ", ".join(str(role).replace("_", " ") for role in entry["roles"])
        missing = [k for k in ("image", "why", "caption", "clipscore", "panel") if k not in entry]
        if missing:
            raise ValueError(f"images[{index}] lacks {', '.join(missing)}")
        if entry["panel"] is None:  # no generated word to draw
            continue
        if Path(str(entry["panel"])).name != entry["panel"]:
            raise ValueError(f"images[{index}].panel {entry['panel']!r} must be a file name inside the folder")
    return data.get("layer"), [entry for entry in data["images"] if entry["panel"] is not None]


def attention_section(page: CaptionPage, answer: CaptionAnswer, up_front: UpFront) -> str:
    """Every method's attention panels (first seed), but those shown up front (``up_front``: method, panels)."""
    parts = [
        "<p>Each panel: the decoder's cross-attention from one generated word to the image patches "
        "(averaged over heads, at the step that generated the word), over the image. Shown for each "
        "method's highest- and lowest-CLIPScore test images and for fixed images (first seed); those in the "
        "examples at the top are not repeated.</p>"
    ]
    for row in answer.rows:
        folder = page.layout.attention_dir(row.method, row.seeds[0])
        parts.append(f"<h3>{esc(row.method)} (seed {row.seeds[0]})</h3>")
        if not (folder / "attention.json").is_file():
            if row.method != BASELINE:  # the baseline's maps are optional
                page.missing_files.append(page.relative(folder / "attention.json"))
            parts.append(f'<p class="note">No attention maps ({esc(page.relative(folder))} has no attention.json).</p>')
            continue
        try:
            layer, entries = attention_entries(folder)
        except (ValueError, OSError) as err:
            parts.append(
                f'<p class="note">{esc(page.relative(folder / "attention.json"))} is unusable: {esc(err)}; '
                f"evaluate again to rewrite it.</p>"
            )
            continue
        parts.append(f'<p class="note">Decoder block {esc(layer)}.</p>')
        shown = up_front[1] if up_front[0] == row.method else set()
        for entry in sorted(
            (e for e in entries if e["panel"] not in shown),
            key=lambda e: next((i for i, w in enumerate(WHY) if e["why"].startswith(w)), len(WHY)),
        ):
            parts.append(
                f"<p><b>{esc(entry['why'])}</b>: {esc(entry['image'])}, “{esc(entry['caption'])}” "
                f"(CLIPScore {float(entry['clipscore']):.3f})</p>"
                + page.image(folder / entry["panel"], f"{row.method} attention on {entry['image']}")
            )
    return "".join(parts)


def missing_section(page: CaptionPage) -> str:
    if not page.missing_files:
        return ""
    items = "".join(f"<li>file not found: {esc(path)}</li>" for path in dict.fromkeys(page.missing_files))
    return f'<div class="missing"><p>This run lacks:</p><ul>{items}</ul></div>'


def write_caption_report(layout: CaptionLayout) -> Path:
    """Write ``results/caption_answer.json``, the figures in ``results/`` and ``report.html``; returns the
    report's path. Needs ``results/caption_summary.csv``; whatever else is absent is listed in the page.

    The first screen is the answer, the figure and the leaderboard (``report.caption_first_screen``), then the
    leading method's attention panels with every method's captions; everything else is in ``<details>``."""
    if not layout.summary.is_file():
        raise FileNotFoundError(f"{layout.summary} not found: run `fewclip caption evaluate` before the report")
    summary = read_csv(layout.summary)
    answer = write_caption_answer(layout, summary)
    page = CaptionPage(layout)
    colours = method_colours([r["method"] for r in summary])
    if answer.leader is not None:
        write_if_changed(layout.results / HEADLINE_FILE, headline_png(answer, colours))
        figure = page.image(layout.results / HEADLINE_FILE, "CIDEr and CLIPScore per method", "headline-image")
    else:
        figure = f'<p class="note">{esc(answer.headline)}</p>'
    predictions = first_seed_predictions(page, answer)
    examples, up_front = examples_up_front(page, answer, predictions)
    body = [
        ("caption-answer", "The statistics behind the answer", answer_section(answer)),
        ("caption-methods", "Every metric, per split", methods_section(summary, answer)),
        ("caption-curves", "Training curves", curves_section(page, summary, colours)),
        ("caption-examples", "Example captions", examples_section(page, answer, predictions)),
        ("caption-attention", "Word-by-word attention", attention_section(page, answer, up_front)),
    ]
    if layout.config.is_file():
        body.append(("config", "Resolved config", f"<pre>{esc(layout.config.read_text(encoding='utf-8'))}</pre>"))
    notice = missing_section(page)
    opening = [("missing", "What is missing", notice)] if notice else []
    sections = "".join(
        f'<details id="{key}"{" open" if key == "missing" else ""}><summary><h2>{esc(title)}</h2></summary>'
        f"{content}</details>"
        for key, title, content in opening + body
    )
    name = layout.root.resolve().name
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>fewclip captioning report: {esc(name)}</title><style>{CSS}</style></head><body>"
        f"<h1>fewclip captioning report: {esc(name)}</h1>"
        f'<p class="note">Run directory {esc(layout.root)}; every number below is read from its files.</p>'
        + caption_first_screen_html(answer, figure, colours)
        + f'<section id="examples-up-front"><h2>Examples</h2>{examples}</section>'
        + f"{sections}</body></html>\n"
    )
    write_if_changed(layout.report, document.encode("utf-8"))
    return layout.report


def write_if_changed(path: Path, data: bytes) -> None:
    """Write ``path`` atomically unless it already holds ``data``: a re-run of a finished run changes nothing."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
