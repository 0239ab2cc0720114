"""``report.html``: one self-contained page (images as base64 data URIs, inline CSS, no script) that opens
offline and mirrors the CSVs and PNGs in the run directory. Numbers are read from those files, never
recomputed; every piece of text that comes from a file (class names, templates, paths, config) is escaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewclip.runner.config import Config, load_config, method_block, split_variant
from fewclip.fileio import atomic_write_text, read_csv, write_json
from fewclip.heads import HEADS
from fewclip.heads.selection_protocol import fewclip_selection, method_selection, paper_selection
from fewclip.runner.layout import RunLayout
from fewclip.runner.run_context import head_class
from fewclip.report.aggregate import class_supports, read_accuracy_table, split_key, write_aggregates
from fewclip.report.answer import SPLIT_NAMES, Answer, answer_json, build_answer, pct, seeds, sentence, unit_table
from fewclip.report.evidence import read_evidence
from fewclip.report.figures import accuracy_plot_path, curves_path, headline_plot_path, method_colours, write_figures
from fewclip.report.first_screen import first_screen_html, leaderboard, plain_answer, unit_train_seconds
from fewclip.report.html_kit import CSS, ArtifactPage, esc, mean_std_text, table, thumbnail, titled_table
from fewclip.report.missing import missing_splits, missing_units
from fewclip.report.protocols import protocols_html, write_protocol_tables

CONFUSION_TABLE_MAX_CLASSES = 30


class Page(ArtifactPage):
    """Collects the sections of the report and whatever it expected on disk but did not find."""

    def __init__(self, layout: RunLayout, config: Config) -> None:
        super().__init__(layout.root)
        self.layout = layout
        self.figures = config.output.figures
        self.saliency_images = config.output.saliency_images

    def image(self, path: Path, alt: str, element_id: str = "") -> str:
        """As ``ArtifactPage.image``; with output.figures off nothing is embedded: a PNG left by an earlier
        run may not match the CSVs."""
        if not self.figures:
            return f'<p class="note">{esc(alt)}: no figure (output.figures is false)</p>'
        return super().image(path, alt, element_id)


# --- sections ------------------------------------------------------------------------------------------------


def answer_section(answer: Answer) -> str:
    """The headline, the rule behind it, the baselines, and one sentence per budget, all from ``answer``."""
    parts = [f'<p class="headline">{esc(answer.headline)}</p>']
    if answer.split is not None:
        rule = (
            f"Metric: {answer.metric_reason}. A method is named best at a budget only if a paired sign-flip "
            f"test on the same test images, over seeds (exact McNemar for one seed), finds it better than "
            f"every other method at that budget, zero-shot included, at alpha = {answer.alpha}; "
            f"otherwise the methods are called indistinguishable on this test set."
        )
        if answer.baselines:
            rule += (
                f" Baselines on the {SPLIT_NAMES.get(answer.split, answer.split)}: chance "
                f"{pct(answer.baselines['chance'])}, always answering the majority class "
                f"{pct(answer.baselines['majority'])} accuracy (its balanced accuracy is chance)."
            )
        parts.append(f'<p class="note">{esc(rule)}</p>')
    for split in sorted({v.split for v in answer.verdicts}, key=split_key):
        parts.append(f"<h3>{esc(SPLIT_NAMES.get(split, split))}</h3><ul>")
        parts += [f"<li>{esc(sentence(v))}</li>" for v in answer.verdicts if v.split == split]
        parts.append("</ul>")
    return "".join(parts)


def accuracy_plot_section(page: Page, accuracy: list[dict[str, Any]]) -> str:
    """The other splits' small multiples (the answer's split is the figure at the top of the report)."""
    if not accuracy:
        return '<p class="note">No results.</p>'
    if len({r["split"] for r in accuracy}) < 2:
        return '<p class="note">One split: the figure at the top of the report shows it.</p>'
    return "<p>The other splits, one panel per trained method, as in the figure at the top.</p>" + page.image(
        accuracy_plot_path(page.layout), "accuracy vs shots"
    )


def missing_section(config: Config, summary: list[dict[str, str]], missing_files: list[str]) -> str:
    """'' when the run is complete; otherwise a list of what the config asked for and the disk lacks."""
    lines = missing_units(config, summary) + missing_splits(config, summary)[0]
    lines += [f"file not found: {path}" for path in dict.fromkeys(missing_files)]
    if not config.output.figures:
        lines.append("output.figures is false: the run wrote no PNG figures, so the report has none")
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return (
        f'<div class="missing"><p>Compared with what the config asks for (methods {esc(", ".join(config.methods))}'
        f" x shots {esc(config.few_shot.shots)} x seeds {esc(config.splits.seeds)}), this run lacks:</p>"
        f"<ul>{items}</ul></div>"
    )


def split_caption(rows: list[dict[str, Any]], split: str) -> str:
    """Test size, chance and majority-class accuracy of one split (from accuracy_table.csv)."""
    row = next((r for r in rows if r.get("n_test")), None)
    known = next((r for r in rows if r.get("chance") is not None), None)
    bits = [f"test images n = {row['n_test']}" if row else "test size not recorded"]
    if known is not None:
        bits += [f"chance {pct(known['chance'])}", f"majority-class accuracy {pct(known['majority'])}"]
    return f'<p class="note">{esc(SPLIT_NAMES.get(split, split))}: {esc("; ".join(bits))}.</p>'


def validation_note(config: Config) -> str:
    """How the run's hyper-parameters were chosen: on the validation split, never on test; what the heads search
    there (``validation_search``); which methods use no validation at all (``fewclip_selection``), and of those
    which follow their validation-free paper (``paper_selection``)."""
    heads = [HEADS.get(split_variant(m)[0]) for m in config.methods]
    searched = list(dict.fromkeys(h.validation_search for h in heads if h.validation_search))
    text = (
        "Hyper-parameters are chosen on the validation split only, never on test: "
        + ", ".join(
            searched
            + [
                "the epoch kept (select; results/summary.csv's selection column says which rule each unit used)",
                "and the temperature of calibrated heads",
            ]
        )
        + ". The selection column says how each method's paper chose them and how this run did "
        "(docs/protocols.md#how-hyper-parameters-are-chosen)."
    )
    free = [
        m
        for m, h in zip(config.methods, heads)
        if paper_selection(h) == "validation-free"
        and fewclip_selection(h, method_block(config, m).model_dump(), config.splits.val_per_class) == "validation-free"
    ]
    if free:
        text += f" {' and '.join(free)} use no validation (the last epoch, no calibration), as in their paper."
    return f'<p class="note">{esc(text)}</p>'


def selections(config: Config) -> dict[str, str]:
    """Each method's selection label (``method_selection``): its paper's protocol on the run's dataset (a CoOp
    dataset by name; otherwise every dataset exception named) and what this run chose on."""
    dataset = getattr(config.dataset, "name", None) if config.dataset.source == "coop" else None
    return {
        m: method_selection(
            HEADS.get(split_variant(m)[0]), method_block(config, m).model_dump(), config.splits.val_per_class, dataset
        )
        for m in config.methods
    }


def accuracy_section(accuracy: list[dict[str, Any]], config: Config, answer: Answer) -> str:
    """Per split, methods x shots: accuracy, balanced accuracy and macro-F1, mean ± std over seeds, in percent;
    the cell of each budget's winner (from ``answer``) is marked."""
    if not accuracy:
        return '<p class="note">No results.</p>'
    budgets = sorted({r["shots"] for r in accuracy} | set(config.few_shot.shots))
    methods = list(dict.fromkeys(r["method"] for r in accuracy))
    winners = {(v.split, v.shots): v.winner for v in answer.verdicts}
    labels = selections(config)
    parts = [
        "<p>Accuracy in percent, mean ± sample std over seeds with the seed count; balanced accuracy "
        '(mean per-class recall) and macro-F1 below it. "best" marks the winner named in the answer above.</p>',
        validation_note(config),
    ]
    for split in sorted({r["split"] for r in accuracy}, key=split_key):
        cells = {(r["method"], r["shots"]): r for r in accuracy if r["split"] == split}
        rows = []
        for method in methods:
            row = [esc(method), esc(labels.get(method, ""))]
            for shots in budgets:
                r = cells.get((method, shots))
                if r is None:
                    row.append("—")
                    continue
                mark = ' <b class="winner">best</b>' if winners.get((split, shots)) == method and shots else ""
                lines = [
                    f'<span class="acc" data-method="{esc(method)}" data-shots="{shots}" data-split="{esc(split)}">'
                    f"{mean_std_text(r['accuracy_mean'], r['accuracy_std'])}</span>"
                    f' <span class="note">({seeds(r["n_seeds"])})</span>{mark}'
                ]
                if r.get("balanced_accuracy_mean") is not None:
                    lines.append(
                        f'<span class="bal">bal. {mean_std_text(r["balanced_accuracy_mean"], r["balanced_accuracy_std"])}</span>'
                    )
                lines.append(f'<span class="f1">F1 {mean_std_text(r["macro_f1_mean"], r["macro_f1_std"])}</span>')
                row.append("<br>".join(lines))
            rows.append(row)
        header = ["method", "selection", *[("0 (zero-shot)" if k == 0 else f"{k} shots") for k in budgets]]
        parts.append(f"<h3>{esc(SPLIT_NAMES.get(split, split))}</h3>")
        parts.append(split_caption(list(cells.values()), split))
        parts.append(table(header, rows, "accuracy-table", (0, 1)))
    return "".join(parts)


def base_new_section(page: Page, config: Config, summary: list[dict[str, str]]) -> str:
    rows = read_csv(page.layout.aggregate / "base_new.csv")
    notes = "".join(f'<p class="note">{esc(line)}.</p>' for line in missing_splits(config, summary)[1])

    labels = selections(config)

    def cell(row: dict[str, str], split: str) -> str:
        mean, std = row[f"{split}_mean"], row[f"{split}_std"]
        return mean_std_text(float(mean), float(std)) if mean else "—"

    return (
        "<p>Accuracy in percent (mean ± std over seeds). The head is trained on the base classes only; "
        "hm is the harmonic mean of base and new.</p>"
        + table(
            ["method", "selection", "shots", "base", "new", "hm"],
            (
                [esc(r["method"]), esc(labels.get(r["method"], "")), esc(r["shots"])]
                + [cell(r, "base"), cell(r, "new"), cell(r, "hm")]
                for r in rows
            ),
            "base-new",
            (0, 1),
        )
        + notes
    )


def params_section(page: Page) -> str:
    rows = read_csv(page.layout.aggregate / "trainable_params.csv")
    return table(
        ["method", "shots", "trainable parameters"],
        ([esc(r["method"]), esc(r["shots"]), f"{int(r['trainable_params']):,}"] for r in rows),
        "params",
    )


def templates_section(page: Page, summary: list[dict[str, str]]) -> str:
    path = page.layout.results / "zero_shot_templates.csv"
    if not any(
        split_variant(r["method"])[0] in HEADS and head_class(r["method"]).per_template_scores for r in summary
    ):  # a file left by an earlier run is not this run's
        return '<p class="note">No per-template results (no head with per-template scores ran).</p>'
    if not path.is_file():
        page.missing_files.append(page.relative(path))
        return '<p class="note">No per-template results.</p>'
    rows = read_csv(path)
    parts = ["<p>Each prompt template alone, next to their ensemble (the zero-shot head's prediction).</p>"]
    for split in sorted(dict.fromkeys(r["split"] for r in rows), key=split_key):
        body = "".join(
            f'<tr class="{"ensemble" if r["template"] == "<ensemble>" else "single"}">'
            f'<td class="text">{esc(r["template"])}</td><td>{pct(float(r["accuracy"]))}</td>'
            f"<td>{pct(float(r['macro_f1']))}</td></tr>"
            for r in rows
            if r["split"] == split
        )
        parts.append(
            f"<h3>{esc(SPLIT_NAMES.get(split, split))}</h3>"
            f'<table class="templates"><thead><tr><th class="text">template</th><th>accuracy</th>'
            f"<th>macro-F1</th></tr></thead><tbody>{body}</tbody></table>"
        )
    return "".join(parts)


def curves_section(page: Page, summary: list[dict[str, str]]) -> str:
    trained = list(dict.fromkeys(r["method"] for r in summary if int(r["shots"]) > 0))
    if not trained:
        return '<p class="note">No trained method (zero-shot has no epochs).</p>'
    parts = ["<p>Mean over seeds per epoch, one line per shot budget.</p>"]
    for method in trained:
        if not (page.layout.results / "history" / method).is_dir():
            parts.append(f'<p class="note">{esc(method)}: no per-epoch history.</p>')
            continue
        parts.append(
            f"<h3>{esc(method)}</h3>" + page.image(curves_path(page.layout, method), f"{method} training curves")
        )
    return "".join(parts)


def config_section(page: Page, config: Config | None) -> str:
    """config.yaml as written, or the config the report was built against when one was passed in."""
    text = config.to_yaml() if config is not None else page.layout.config.read_text(encoding="utf-8")
    return f"<pre>{esc(text)}</pre>"


# --- per-method details --------------------------------------------------------------------------------------


def detail_unit(summary: list[dict[str, str]], method: str) -> tuple[int, int]:
    """The unit shown in detail: the largest shot budget, its smallest seed (the one with saliency maps)."""
    shots = max(int(r["shots"]) for r in summary if r["method"] == method)
    return shots, min(int(r["seed"]) for r in summary if r["method"] == method and int(r["shots"]) == shots)


def confusion_table(rows: list[dict[str, str]]) -> str:
    names = list(rows[0])[1:] if rows else []
    if len(names) > CONFUSION_TABLE_MAX_CLASSES:
        return f'<p class="note">{len(names)} classes: the counts are in confusion.csv.</p>'
    return table(
        ["true \\ predicted", *map(esc, names)],
        ([esc(r["true \\ predicted"]), *(esc(r[n]) for n in names)] for r in rows),
        "confusion",
    )


def unit_split_details(
    page: Page,
    summary: list[dict[str, str]],
    per_class: list[dict[str, str]],
    method: str,
    shots: int,
    seed: int,
    split: str,
) -> str:
    folder = page.layout.unit_results(method, shots, seed, split)
    parts = [
        f"<h4>{esc(SPLIT_NAMES.get(split, split))}</h4>",
        "<p><b>Confusion matrix</b></p>",
        page.image(folder / "confusion.png", f"{method} confusion matrix"),
    ]
    confusion = page.csv(folder / "confusion.csv")
    if confusion is not None:
        parts.append(confusion_table(confusion))
    unit_class = [
        r
        for r in per_class
        if (r["method"], int(r["shots"]), int(r["seed"]), r["split"]) == (method, shots, seed, split)
    ]
    parts.append(
        "<p><b>Per class</b></p>"
        + table(
            ["class", "precision", "recall", "F1", "support"],
            (
                [
                    esc(r["class_name"]),
                    f"{float(r['precision']):.3f}",
                    f"{float(r['recall']):.3f}",
                    f"{float(r['f1']):.3f}",
                    esc(r["support"]),
                ]
                for r in unit_class
            ),
            "per-class",
        )
    )
    pairs = page.csv(folder / "confused_pairs.csv")
    if pairs is not None:
        rows = [[esc(r["true"]), esc(r["predicted"]), esc(r["count"])] for r in pairs]
        header = ["true", "predicted as", "count"]
        parts.append(titled_table("Most-confused pairs", header, rows, "pairs", (0, 1), "No confusions."))
    mistakes = page.csv(folder / "mistakes.csv")
    if mistakes is not None:
        rows = [
            [
                thumbnail(resolve_image(page.layout, r["path"])),
                esc(r["true"]),
                esc(r["predicted"]),
                f"{float(r['confidence']):.3f}",
                esc(r["path"]),
            ]
            for r in mistakes
        ]
        header = ["image", "true", "predicted", "confidence", "path"]
        parts.append(titled_table("Most confident mistakes", header, rows, "mistakes", (1, 2, 4), "No mistakes."))
    ece = next(
        (
            r["ece"]
            for r in summary
            if (r["method"], int(r["shots"]), int(r["seed"]), r["split"]) == (method, shots, seed, split)
        ),
        "",
    )
    parts.append(
        f"<p><b>Calibration</b>: ECE {esc(f'{float(ece):.4f}' if ece else 'not recorded')}</p>"
        + page.image(folder / "reliability.png", f"{method} reliability diagram")
    )
    return "".join(parts)


def resolve_image(layout: RunLayout, path: str) -> Path:
    """mistakes.csv paths are relative to <run>/data, or absolute (image folders used in place)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else layout.data / candidate


def details_section(page: Page, summary: list[dict[str, str]]) -> str:
    per_class = (
        read_csv(page.layout.results / "per_class.csv") if (page.layout.results / "per_class.csv").is_file() else []
    )
    parts = ["<p>One unit per method: the largest shot budget and its first seed.</p>"]
    for method in dict.fromkeys(r["method"] for r in summary):
        shots, seed = detail_unit(summary, method)
        parts.append(f"<h3>{esc(method)}: {shots} shots, seed {seed}</h3>")
        unit_splits = {
            r["split"] for r in summary if (r["method"], int(r["shots"]), int(r["seed"])) == (method, shots, seed)
        }
        for split in sorted(unit_splits - {"hm"}, key=split_key):
            parts.append(unit_split_details(page, summary, per_class, method, shots, seed, split))
        parts.append("<p><b>Saliency</b> (where the image evidence for the prediction lies)</p>")
        if page.figures and not page.saliency_images:
            parts.append('<p class="note">No saliency maps (output.saliency_images is 0).</p>')
        else:
            parts.append(page.image(page.layout.saliency(method, shots, seed) / "saliency.png", f"{method} saliency"))
    return "".join(parts)


# --- the page ------------------------------------------------------------------------------------------------


def write_answer(
    layout: RunLayout, accuracy: list[dict[str, Any]], config: Config, summary: list[dict[str, str]]
) -> Answer:
    """Compute the answer once (with the first screen's sentences and leaderboard); write results/answer.json and results/recommendation.json (read by predict)."""
    per_class = layout.results / "per_class.csv"
    supports = class_supports(read_csv(per_class)) if per_class.is_file() else {}
    params, unit_seeds = unit_table(summary)
    evidence = read_evidence(layout, summary)
    answer = build_answer(accuracy, config.few_shot.shots, evidence, supports, params, unit_seeds)
    answer.plain = plain_answer(answer, accuracy, evidence)
    answer.leaderboard = leaderboard(answer, accuracy, evidence, params, unit_train_seconds(summary))
    write_json(layout.answer, answer_json(answer))
    if answer.recommendation is not None:
        write_json(
            layout.recommendation,
            {**answer.recommendation, "subsample": config.splits.subsample, "headline": answer.headline},
        )
    else:
        layout.recommendation.unlink(missing_ok=True)
    return answer


def build_report(run_dir: Path, config: Config | None = None) -> Path:
    """Write the aggregate tables and plots, then ``<run_dir>/report.html``; returns its path.

    ``config`` defaults to the run's config.yaml; what it asks for and the results lack is listed up front.
    """
    layout = RunLayout(Path(run_dir))
    if not layout.summary.is_file():
        raise FileNotFoundError(f"{layout.summary} not found: run `fewclip evaluate` before `fewclip report`")
    given = config
    config = config if config is not None else load_config(layout.config)
    write_aggregates(layout)
    summary = read_csv(layout.summary)
    accuracy = read_accuracy_table(layout.aggregate / "accuracy_table.csv")
    answer = write_answer(layout, accuracy, config, summary)
    rec = answer.recommendation
    if config.output.figures:
        recommended = (rec["method"], rec["shots"]) if rec is not None else None
        write_figures(layout, {v.split: v.metric for v in answer.verdicts}, answer.split, recommended)
    page = Page(layout, config)
    body = [
        ("accuracy", "Accuracy and macro-F1 by method and shots", accuracy_section(accuracy, config, answer)),
        ("accuracy-plot", "Accuracy vs shots", accuracy_plot_section(page, accuracy)),
    ]
    if (layout.aggregate / "base_new.csv").is_file():
        body.append(("base-new", "Base / new / harmonic mean", base_new_section(page, config, summary)))
    protocol_tables = write_protocol_tables(layout, accuracy)
    if protocol_tables:
        body.append(
            (
                "targets",
                "Source and target datasets (dataset.eval_on)",
                protocols_html(protocol_tables, selections(config)),
            )
        )
    body += [
        ("params", "Trainable parameters", params_section(page)),
        ("templates", "Zero-shot accuracy per template", templates_section(page, summary)),
        ("curves", "Training curves", curves_section(page, summary)),
        ("details", "Per-method details", details_section(page, summary)),
        ("config", "Resolved config", config_section(page, given)),
    ]
    figure = (
        page.image(headline_plot_path(layout), "headline: accuracy vs shots", "headline-image")
        if accuracy
        else '<p class="note">No results.</p>'
    )
    glance = first_screen_html(answer, figure, method_colours([r["method"] for r in accuracy]))
    opening = [("statistics", "The answer", answer_section(answer))]
    notice = missing_section(config, summary, page.missing_files)
    if notice:
        opening.append(("missing", "What is missing", notice))
    sections = glance + "".join(
        f'<details id="{key}"{" open" if key == "missing" else ""}><summary><h2>{esc(title)}</h2></summary>'
        f"{content}</details>"
        for key, title, content in opening + body
    )
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>fewclip report: {esc(config.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>fewclip report: {esc(config.name)}</h1>"
        f'<p class="note">Run directory {esc(layout.root)}; every number below is read from its CSV files.</p>'
        f"{sections}</body></html>\n"
    )
    atomic_write_text(layout.report, document)
    return layout.report
