"""The captioning report's first screen, as the classification report's (``report.first_screen``): the answer's
plain sentences (``caption_answer.plain_caption_answer``), one figure (CIDEr and CLIPScore per method with their 95% intervals over the test
images, the untrained decoder as the baseline line, the winner starred) and a leaderboard, all from the one
``CaptionAnswer`` (``report.caption_answer``). The tests behind them are in the sections below it.
"""

from __future__ import annotations

from fewclip.report.answer import and_list, p_text
from fewclip.report.caption_answer import (
    INTERVAL_METRICS,
    METRIC_NAMES,
    CaptionAnswer,
    MethodRow,
    comparison,
    interval_text,
    score,
)
from fewclip.report.first_screen import seconds_text
from fewclip.report.html_kit import esc, table
from fewclip.report.unit_figures import png_bytes, pyplot
from fewclip.runner.caption_config import BASELINE


def ranked(answer: CaptionAnswer) -> list[MethodRow]:
    """The answer's split's methods with a CIDEr, highest mean first (the leader on top)."""
    scored = [r for r in answer.rows if r.mean["cider"] is not None]
    return sorted(scored, key=lambda r: -(r.mean["cider"] or 0.0))


def headline_png(answer: CaptionAnswer, colours: dict[str, str]) -> bytes:
    """Two panels, CIDEr and CLIPScore: one row per method (best CIDEr on top), its mean over seeds as a dot and
    its 95% interval over the test images as a bar, in the method's colour; the untrained decoder's mean as a
    dashed line across the panel; the winner starred. Returns the PNG's bytes."""
    plt = pyplot()
    rows = ranked(answer)
    height = 0.42 * len(rows) + 1.2
    figure, axes = plt.subplots(1, len(INTERVAL_METRICS), figsize=(12.5, height), sharey=True, squeeze=False)
    positions = list(range(len(rows)))[::-1]  # best on top
    for axis, metric in zip(axes[0], INTERVAL_METRICS):
        for y, row in zip(positions, rows):
            mean = row.mean[metric]
            if mean is None:
                continue
            colour = colours.get(row.method, "black")
            interval = answer.intervals.get(row.method, {}).get(metric)
            if interval is not None:
                axis.plot(interval, [y, y], color=colour, linewidth=4, alpha=0.45, solid_capstyle="butt")
            starred = row.method == answer.winner
            axis.plot(
                [mean],
                [y],
                marker="*" if starred else "o",
                markersize=16 if starred else 8,
                color=colour,
                markeredgecolor="black" if starred else colour,
            )
            if row.method == BASELINE:
                axis.axvline(mean, color=colour, linestyle="--", linewidth=1.2)
        axis.set_title(f"{METRIC_NAMES[metric]} (95% interval over {answer.n_images} images)", fontsize=11)
        axis.grid(axis="x", alpha=0.3)
        axis.set_ylim(-0.6, len(rows) - 0.4)
    axes[0][0].set_yticks(positions, [r.method for r in rows], fontsize=11)
    figure.subplots_adjust(wspace=0.08)
    return png_bytes(figure)


def leaderboard_html(answer: CaptionAnswer, colours: dict[str, str]) -> str:
    """One row per method, best CIDEr first: CIDEr and CLIPScore with their intervals, the gain over the untrained
    decoder, trainable parameters, train time and the paired test of the top row against it."""
    rows = ranked(answer)
    baseline = next((r for r in answer.rows if r.method == BASELINE), None)
    body = []
    for rank, row in enumerate(rows):
        intervals = answer.intervals.get(row.method, {})
        mark = ""
        if row.method == answer.winner:
            mark = ' <b class="winner">best</b>'
        found = comparison(answer, row.method)
        if rank == 0:
            versus = "top"
        elif found is None or found.test is None:
            versus = "not tested"
        else:
            below = found.test.difference > 0 and found.test.significant(answer.alpha)
            versus = f"{'below' if below else 'not separable'} ({p_text(found.test.p_value)})"
        gain = (
            "—"
            if baseline is None or row is baseline or baseline.mean["cider"] is None
            else f"{(row.mean['cider'] or 0.0) - baseline.mean['cider']:+.2f}"
        )
        body.append(
            [
                f'<span class="swatch" style="background:{esc(colours.get(row.method, "#999"))}"></span>'
                f"{esc(row.method)}{mark}",
                *(
                    f'<b>{score(row.mean[m])}</b> <span class="note">{esc(interval_text(intervals.get(m)))}</span>'
                    for m in INTERVAL_METRICS
                ),
                esc(gain),
                f"{row.trainable_params:,}",
                esc(seconds_text(row.mean["train_seconds"] if row.trainable_params else None)),
                esc(versus),
            ]
        )
    header = [
        "method",
        "CIDEr (95% interval)",
        "CLIPScore (95% interval)",
        "CIDEr vs untrained",
        "trainable params",
        "train time",
        "paired test vs the top",
    ]
    return table(header, body, "leaderboard", (0, 6), element_id="leaderboard")


def caption_first_screen_html(answer: CaptionAnswer, figure: str, colours: dict[str, str]) -> str:
    """The answer, the figure (``figure``: its <img> or a note) and the leaderboard (``colours``: every method's)."""
    sentences = "".join(f"<p>{esc(s)}</p>" for s in answer.plain)
    seeds = sorted({len(r.seeds) for r in answer.rows})
    caption = (
        f"CIDEr and CLIPScore on the {answer.split} split: the mean over "
        f"{and_list([str(s) for s in seeds]) if seeds else 'no'} seed{'s' if seeds != [1] else ''} (dot) with its "
        f"95% interval over the {answer.n_images} test images (bar); {BASELINE} is the decoder with fresh "
        "cross-attention and no tuning (dashed line)"
        + ("; the star marks the method the paired test puts ahead of every other." if answer.winner else ".")
    )
    return (
        f'<section id="glance"><div id="answer">{sentences}</div>'
        f'<figure id="headline-figure">{figure}<figcaption class="note">{esc(caption)}</figcaption></figure>'
        + (leaderboard_html(answer, colours) if answer.leader is not None else "")
        + "</section>"
    )
