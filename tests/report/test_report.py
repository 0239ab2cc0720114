"""The report stage: aggregate tables, plots and report.html, checked against the CSVs they are read from."""

from __future__ import annotations

import base64
import html
import json
import io
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from fewclip.runner import pipeline
from fewclip.runner.cli import main
from fewclip.fileio import read_csv, write_csv
from fewclip.runner.layout import RunLayout
from fewclip.report.aggregate import accuracy_table, constant_baseline, mean_std, metric_interval, read_accuracy_table
from fewclip.stats import wilson_interval
from fewclip.report.html import build_report
from fewclip.report.html_kit import thumbnail
from tests.report.browser import check_first_screen, chromium

EVIL = "<script>alert(1)</script>"
SECTIONS = [
    "The answer",
    "Accuracy and macro-F1 by method and shots",
    "Accuracy vs shots",
    "Trainable parameters",
    "Zero-shot accuracy per template",
    "Training curves",
    "Per-method details",
    "Resolved config",
]


class ReportParser(HTMLParser):
    """Headings, every src/href, the method x shots cells and the tables of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: dict[str, list[str]] = {"h2": [], "h3": []}
        self.links: list[str] = []
        self.cells: list[dict[str, str]] = []  # the accuracy spans: data-* attributes and text
        self.f1: list[str] = []
        self.tables: list[dict[str, Any]] = []  # {"class": ..., "rows": [[cell text, ...], ...]}
        self._open: list[tuple[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.links += [value or "" for key, value in attrs if key in ("src", "href")]
        if tag in self.headings:
            self._open.append((tag, []))
        elif tag == "span" and attributes.get("class") in ("acc", "f1"):
            self._open.append((attributes["class"], {**attributes, "text": ""}))
        elif tag == "table":
            self.tables.append({"class": attributes.get("class"), "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self.tables[-1]["rows"][-1].append("")
            self._open.append(("cell", None))

    def handle_endtag(self, tag: str) -> None:
        if not self._open:
            return
        kind, data = self._open[-1]
        if kind == tag and tag in self.headings:
            self.headings[tag].append("".join(data).strip())
        elif tag == "span" and kind == "acc":
            self.cells.append(data)
        elif tag == "span" and kind == "f1":
            self.f1.append(data["text"])
        elif tag in ("td", "th") and kind == "cell":
            pass
        else:
            return
        self._open.pop()

    def handle_data(self, data: str) -> None:
        for kind, value in self._open:
            if kind in self.headings:
                value.append(data)
            elif kind in ("acc", "f1"):
                value["text"] += data
        if self._open and self._open[-1][0] == "cell" and self.tables:
            self.tables[-1]["rows"][-1][-1] += data


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def percent_pair(text: str) -> tuple[float, float]:
    """``F1 47.22 ± 11.79`` -> (0.4722, 0.1179)."""
    mean, std = text.replace("F1", "").split("±")
    return float(mean) / 100, float(std) / 100


@pytest.fixture()
def run_report(make_config: Callable[..., Any]) -> Callable[..., tuple[Any, RunLayout]]:
    """Run every stage (report included) on the shapes data, one class renamed to a script tag."""

    def build(*overrides: str) -> tuple[Any, RunLayout]:
        config = make_config(
            "few_shot.shots=[1,2]",
            "splits.seeds=[1,2]",
            "linear_probe.epochs=5",
            "output.saliency_images=3",
            *overrides,
            dataset={"source": "folder", "path": make_config().dataset.path, "rename": {"red_circle": EVIL}},
            # templates short enough for the script-tag name in the tiny CLIP's 32 positions
            prompts={"templates": ["a photo of a {}.", "the {}.", "a {}."]},
        )
        pipeline.run(config)
        return config, RunLayout(Path(config.output.dir))

    return build


# --- pure aggregation and wording ----------------------------------------------------------------------------


def test_mean_std_is_the_sample_std_and_zero_for_one_seed() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5) and std == pytest.approx(statistics.stdev([0.2, 0.4, 0.9]))
    rows = [
        {"method": "m", "shots": "2", "seed": str(s), "split": "test", "accuracy": a, "macro_f1": "0.5"}
        for s, a in ((1, "0.25"), (2, "0.75"))
    ]
    (row,) = accuracy_table(rows)
    assert (row["n_seeds"], row["accuracy_mean"], row["macro_f1_std"]) == (2, 0.5, 0.0)
    assert row["accuracy_std"] == pytest.approx(statistics.stdev([0.25, 0.75]))


def test_thumbnails_are_small_embedded_pngs_and_never_crash(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    Image.new("RGB", (640, 320), (200, 30, 30)).save(big)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    tag = thumbnail(big)
    prefix = 'src="data:image/png;base64,'
    assert prefix in tag
    encoded = tag.split(prefix, 1)[1].split('"', 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as small:
        assert small.format == "PNG" and small.size == (96, 48)
    assert "image not found" in thumbnail(tmp_path / "gone.png")
    assert "unreadable image" in thumbnail(tmp_path / "broken.png")


def test_report_without_evaluation_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fewclip evaluate"):
        build_report(tmp_path)


# --- the report of a real run --------------------------------------------------------------------------------


def test_report_opens_with_the_answer_has_every_section_and_is_self_contained(run_report) -> None:
    config, layout = run_report()
    text = layout.report.read_text(encoding="utf-8")
    page = parse(layout.report)
    assert page.headings["h2"] == SECTIONS  # in order; nothing missing, so no notice; no base-to-new table
    answer = text[text.index("The answer") : text.index("Accuracy and macro-F1")]
    assert (
        "On the test split (18 images), measured by accuracy, with a paired test over seeds at alpha = 0.05" in answer
    )
    assert "<li>At 1 shot, " in answer and "<li>At 2 shots, " in answer and "zero_shot (" in answer
    recommendation = json.loads(layout.recommendation.read_text())
    assert f"Recommended: {recommendation['method']} at {recommendation['shots']} shot" in answer
    assert json.loads(layout.answer.read_text())["headline"] in html.unescape(answer)
    # escaped everywhere: class names in tables, templates, config
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert EVIL not in text and "<script" not in text.lower()
    assert "&lt;ensemble&gt;" in text and "a photo of a {}." in text
    # offline: every src/href is an embedded PNG; no external reference anywhere in an attribute
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)|url\(|@import|<link""", text, re.I)
    # figures, one per unit shown, the plots, and thumbnails of the mistakes
    for name in (
        "headline: accuracy vs shots",
        "linear_probe training curves",
        "linear_probe confusion matrix",
        "zero_shot reliability diagram",
        "linear_probe saliency",
    ):
        assert f'alt="{name}"' in text
    assert 'class="thumb"' in text and "image not found" not in text
    assert {
        "accuracy_table.csv",
        "trainable_params.csv",
        "headline.png",
        "training_curves-linear_probe.png",
    } <= {p.name for p in layout.aggregate.iterdir()}
    assert not (layout.aggregate / "base_new.csv").exists()
    assert not (layout.aggregate / "accuracy_vs_shots.png").exists()  # one split: the headline figure shows it
    # every accuracy table says how each method's hyper-parameters were chosen, by its paper and by this run
    accuracy = text[text.index("Accuracy and macro-F1") : text.index("Accuracy vs shots")]
    assert accuracy.count('<th class="text">selection</th>') == len(re.findall(r"<h3>", accuracy)) >= 1
    assert '<td class="text">paper: none; fewclip: none</td>' in accuracy  # zero_shot
    assert '<td class="text">paper: few-shot validation; fewclip: validation split</td>' in accuracy  # linear_probe


def test_report_numbers_equal_the_aggregate_csv_which_equals_summary(run_report) -> None:
    config, layout = run_report()
    summary = read_csv(layout.summary)
    table = read_csv(layout.aggregate / "accuracy_table.csv")
    assert {(r["method"], r["shots"]) for r in table} == {
        ("zero_shot", "0"),
        ("linear_probe", "1"),
        ("linear_probe", "2"),
    }
    for row in table:  # aggregate CSV == mean / sample std over seeds of summary.csv
        seeds = [
            r for r in summary if (r["method"], r["shots"], r["split"]) == (row["method"], row["shots"], row["split"])
        ]
        assert int(row["n_seeds"]) == len(seeds) == (1 if row["method"] == "zero_shot" else 2)
        for metric in ("accuracy", "macro_f1"):
            values = [float(r[metric]) for r in seeds]
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-6)
            assert float(row[f"{metric}_std"]) == pytest.approx(
                statistics.stdev(values) if len(values) > 1 else 0, abs=1e-6
            )
    n_test = len(read_csv(layout.test))
    for row in table:  # test size, baselines (3 classes x 6 test images) and balanced accuracy beside accuracy
        assert (row["n_test"], row["chance"], row["majority"]) == (str(n_test), "0.333333", "0.333333")
        seeds = [
            float(r["balanced_accuracy"])
            for r in summary
            if (r["method"], r["shots"], r["split"]) == (row["method"], row["shots"], row["split"])
        ]
        assert float(row["balanced_accuracy_mean"]) == pytest.approx(statistics.mean(seeds), abs=1e-6)
    for unit in summary:  # Wilson interval around each unit's accuracy
        assert float(unit["acc_low"]) < float(unit["accuracy"]) < float(unit["acc_high"])
    text = layout.report.read_text(encoding="utf-8")
    assert f"test split: test images n = {n_test}; chance 33.33%; majority-class accuracy 33.33%." in text
    page = parse(layout.report)
    assert len(page.cells) == len(page.f1) == len(table)
    shown = {
        (c["data-method"], c["data-shots"], c["data-split"]): (c["text"], f1) for c, f1 in zip(page.cells, page.f1)
    }
    for row in table:  # the report prints the CSV's numbers, in percent with two decimals
        acc_text, f1_text = shown[(row["method"], row["shots"], row["split"])]
        for (mean, std), metric in ((percent_pair(acc_text), "accuracy"), (percent_pair(f1_text), "macro_f1")):
            assert mean == pytest.approx(float(row[f"{metric}_mean"]), abs=5.1e-5)
            assert std == pytest.approx(float(row[f"{metric}_std"]), abs=5.1e-5)
    params = next(t for t in page.tables if t["class"] == "params")["rows"][1:]
    assert params == [
        [r["method"], r["shots"], f"{int(r['trainable_params']):,}"]
        for r in read_csv(layout.aggregate / "trainable_params.csv")
    ]
    assert [p[2] for p in params] == ["0", "99", "99"]  # zero-shot; 32-dim features x 3 classes + 3 biases


def test_first_screen_is_the_answer_the_headline_figure_and_a_leaderboard_read_from_the_tables(run_report) -> None:
    config, layout = run_report()
    text = layout.report.read_text(encoding="utf-8")
    glance = text[text.index('<section id="glance">') : text.index("</section>")]
    assert text.index("</section>") < text.index("<details")  # everything else comes after it, collapsible
    assert text.count("<details") == len(SECTIONS) and '<details id="statistics"><summary><h2>The answer' in text
    answer = json.loads(layout.answer.read_text())
    assert 1 <= len(answer["plain"]) <= 3
    assert (
        glance.index('<div id="answer">')
        < glance.index('<figure id="headline-figure">')
        < glance.index('id="leaderboard"')
    )
    assert "".join(f"<p>{html.escape(s)}</p>" for s in answer["plain"]) in glance
    table = read_accuracy_table(layout.aggregate / "accuracy_table.csv")
    params = {
        (r["method"], int(r["shots"])): int(r["trainable_params"])
        for r in read_csv(layout.aggregate / "trainable_params.csv")
    }
    zero = next(r["accuracy_mean"] for r in table if r["method"] == "zero_shot")
    expected = []
    for method in ("zero_shot", "linear_probe"):  # each method at its best budget, best first
        best = max((r for r in table if r["method"] == method), key=lambda r: (r["accuracy_mean"], -r["shots"]))
        low, high = wilson_interval(best["accuracy_mean"] * best["n_test"], best["n_test"])
        gain = "—" if method == "zero_shot" else f"{100 * (best['accuracy_mean'] - zero):+.1f}"
        shots = "zero-shot" if method == "zero_shot" else str(best["shots"])
        expected.append(
            (
                best["accuracy_mean"],
                method,
                shots,
                f"{100 * best['accuracy_mean']:.1f}% {100 * low:.1f}–{100 * high:.1f}%",
                gain,
                f"{params[(method, best['shots'])]:,}",
            )
        )
    expected.sort(key=lambda e: -e[0])
    rows = next(t for t in parse(layout.report).tables if t["class"] == "leaderboard")["rows"]
    assert rows[0][:5] == [
        "method",
        "best budget (shots)",
        "accuracy (95% interval)",
        "vs zero-shot (points)",
        "trainable params",
    ]
    assert [[r[0].replace(" recommended", ""), *r[1:5]] for r in rows[1:]] == [list(e[1:]) for e in expected]
    recommended = json.loads(layout.recommendation.read_text())
    assert [r[0] for r in rows[1:] if r[0].endswith(" recommended")] == [f"{recommended['method']} recommended"]
    assert rows[1][6] == "top" and all(r[6].startswith(("below (p", "not separable (p")) for r in rows[2:])
    first = answer["plain"][0]
    mean = next(e[0] for e in expected if e[1] == recommended["method"])
    assert f"{recommended['method']} reaches {100 * mean:.1f}% accuracy on the test split" in first
    assert "18 test images" in first


def test_hm_interval_is_the_harmonic_mean_of_the_sides_bonferroni_intervals() -> None:
    rows = [
        {"method": "m", "shots": 4, "split": s, "n_test": n, "accuracy_mean": a, "majority": maj, "chance": 0.1}
        for s, n, a, maj in (("base", 100, 0.6, 0.2), ("new", 50, 0.3, 0.1), ("hm", None, 0.4, None))
    ]
    base, new = wilson_interval(60, 100, 0.975), wilson_interval(15, 50, 0.975)
    low, high = metric_interval(rows, rows[2], "accuracy")  # type: ignore[misc]
    assert low == pytest.approx(2 * base[0] * new[0] / (base[0] + new[0]))
    assert high == pytest.approx(2 * base[1] * new[1] / (base[1] + new[1]))
    assert low < 0.4 < high and metric_interval(rows, rows[0], "accuracy") == wilson_interval(60, 100)
    assert constant_baseline(rows, "hm", "accuracy") == pytest.approx(2 * 0.2 * 0.1 / 0.3)
    assert constant_baseline(rows, "base", "balanced_accuracy") == 0.1
    assert metric_interval(rows[2:], rows[2], "accuracy") is None  # a side unknown


def test_confusion_matrices_in_the_report_sum_to_the_test_set_and_give_the_accuracy(run_report) -> None:
    config, layout = run_report()
    n_test = len(read_csv(layout.test))
    summary = {(r["method"], int(r["shots"]), int(r["seed"])): r for r in read_csv(layout.summary)}
    confusions = [t["rows"] for t in parse(layout.report).tables if t["class"] == "confusion"]
    assert len(confusions) == 2  # one unit per method: zero_shot (0, 0) and linear_probe at 2 shots, seed 1
    for rows, unit in zip(confusions, [("zero_shot", 0, 0), ("linear_probe", 2, 1)]):
        assert rows[0][1:] == ["blue triangle", "green square", EVIL]  # parsed text: unescaped once, as written
        counts = [[int(c) for c in row[1:]] for row in rows[1:]]
        total = sum(map(sum, counts))
        assert total == n_test == int(summary[unit]["n_eval"])
        trace = sum(counts[i][i] for i in range(len(counts)))
        assert trace / total == pytest.approx(float(summary[unit]["accuracy"]), abs=1e-6)


def test_report_says_what_is_missing_and_survives_missing_images(
    run_report, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, layout = run_report()
    # one unit's rows gone, a budget the run never had, an image the mistakes table cannot find
    summary = read_csv(layout.summary)
    kept = [r for r in summary if (r["method"], r["shots"], r["seed"]) != ("linear_probe", "2", "2")]
    write_csv(layout.summary, list(summary[0]), ([r[c] for c in summary[0]] for r in kept))
    mistakes_csv = layout.unit_results("linear_probe", 2, 1, "test") / "mistakes.csv"
    mistakes = read_csv(mistakes_csv)
    assert mistakes
    mistakes[0]["path"] = "images/gone.png"  # relative to <run>/data
    write_csv(mistakes_csv, list(mistakes[0]), ([r[c] for c in mistakes[0]] for r in mistakes))
    asking_more = config.model_copy(update={"few_shot": config.few_shot.model_copy(update={"shots": [1, 2, 4]})})
    build_report(layout.root, asking_more)

    text = layout.report.read_text(encoding="utf-8")
    page = parse(layout.report)
    assert page.headings["h2"][:2] == ["The answer", "What is missing"]
    notice = text[text.index("What is missing") : text.index("Accuracy and macro-F1")]
    assert "linear_probe: no results for 2 shots (seed 2); 4 shots (seeds 1, 2)" in notice
    assert "zero_shot" not in notice.split("</p>", 1)[1]  # zero-shot is complete
    assert "At 4 shots: no results" in text
    assert "image not found" in text
    n_cell = next(c for c in page.cells if (c["data-method"], c["data-shots"]) == ("linear_probe", "2"))
    assert "(1 seed)" in text[text.index(n_cell["text"]) :][:120]
    table = read_csv(layout.aggregate / "accuracy_table.csv")
    assert next(r for r in table if (r["method"], r["shots"]) == ("linear_probe", "2"))["n_seeds"] == "1"

    # the CLI stage rebuilds it from the run's own config: only the deleted unit is missing now
    capsys.readouterr()
    assert main(["-q", "report", str(layout.config)]) == 0
    printed = capsys.readouterr().out.splitlines()  # the answer in a few lines, not a CSV dump
    assert printed == [
        *json.loads(layout.answer.read_text())["plain"],
        f"table: {layout.aggregate / 'accuracy_table.csv'}",
        f"report: {layout.report}",
    ]
    text = layout.report.read_text(encoding="utf-8")
    notice = text[text.index("What is missing") : text.index("Accuracy and macro-F1")]
    assert "linear_probe: no results for 2 shots (seed 2)</li>" in notice and "4 shots" not in notice


def test_base_to_new_report_without_figures(run_report) -> None:
    config, layout = run_report("splits.subsample=base2new", "output.figures=false")
    page = parse(layout.report)
    text = layout.report.read_text(encoding="utf-8")
    assert "Base / new / harmonic mean" in page.headings["h2"]
    assert page.headings["h2"].index("Base / new / harmonic mean") == page.headings["h2"].index("Accuracy vs shots") + 1
    notice = text[text.index("What is missing") : text.index("Accuracy and macro-F1")]
    assert "output.figures is false" in notice and "linear_probe:" not in notice  # no new rows is by design
    base_new_text = text[text.index("Base / new / harmonic mean") : text.index("Trainable parameters")]
    assert (
        "linear_probe: no new, hm rows for 4 of 4 units; it cannot classify classes it was not trained on"
        in base_new_text
    )
    assert page.links and text.count('<img class="thumb" src="data:') == len(page.links)  # thumbnails only
    base_new = read_csv(layout.aggregate / "base_new.csv")
    summary = read_csv(layout.summary)
    zero_shot = next(r for r in base_new if r["method"] == "zero_shot")
    for split in ("base", "new", "hm"):
        row = next(r for r in summary if r["method"] == "zero_shot" and r["split"] == split)
        assert zero_shot[f"{split}_mean"] == row["accuracy"] and zero_shot[f"{split}_std"] == "0.000000"
    probe = next(r for r in base_new if (r["method"], r["shots"]) == ("linear_probe", "2"))
    assert probe["new_mean"] == probe["hm_mean"] == ""
    rows = next(t for t in page.tables if t["class"] == "base-new")["rows"]
    assert [
        "linear_probe",
        "paper: few-shot validation; fewclip: validation split",
        "2",
        f"{100 * float(probe['base_mean']):.2f} ± {100 * float(probe['base_std']):.2f}",
        "—",
        "—",
    ] in rows
    glance = text[: text.index("<details")]
    assert "on the harmonic mean of base and new" in glance.split('<div id="answer">', 1)[1].split("</p>", 1)[0]
    assert "No result on the harmonic mean of base and new, so not ranked: linear_probe (see below).</p>" in glance
    statistics = text[text.index('<details id="statistics">') :]
    assert '<p class="headline">On the harmonic mean of base and new' in statistics.split("</p>", 1)[0]


# --- a real browser ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_headless_chromium_renders_the_report_offline(run_report, tmp_path: Path) -> None:
    config, layout = run_report()
    shot = tmp_path / "report.png"
    chromium(tmp_path, layout.report, f"--screenshot={shot}", "--window-size=1200,2000")
    assert shot.is_file()
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and an embedded plot, not a blank page


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("methods=[zero_shot,linear_probe,tip_adapter,zs_lp]",),
        ("methods=[zero_shot,coop]", "coop.n_ctx=4", "coop.epochs=3", "splits.subsample=base2new"),
    ],
    ids=["test-split", "base-to-new"],
)
def test_first_screen_holds_the_answer_the_figure_and_the_leaderboard_and_nothing_overflows(
    run_report, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    config, layout = run_report(*overrides)
    two_sided = "splits.subsample=base2new" in overrides  # the headline on hm; base and new in the section below
    assert json.loads(layout.answer.read_text())["split"] == ("hm" if two_sided else "test")
    assert (layout.aggregate / "accuracy_vs_shots.png").is_file() == two_sided
    check_first_screen(tmp_path, layout.report)


def test_report_says_hyper_parameters_come_from_validation_and_which_methods_use_none(make_config) -> None:
    from fewclip.report.html import validation_note

    note = html.unescape(validation_note(make_config("methods=[zero_shot,tip_adapter,zs_lp,clap,coop]")))
    assert note.startswith(
        '<p class="note">Hyper-parameters are chosen on the validation split only, never on '
        "test: Tip-Adapter's alpha and beta (grid search), the epoch kept"
    )
    assert note.endswith("zs_lp and clap use no validation (the last epoch, no calibration), as in their paper.</p>")
    # a ZS-LP told to select on val is not called validation-free; without Tip-Adapter its search goes unnamed
    note = html.unescape(validation_note(make_config("methods=[zs_lp,clap,linear_probe]", "zs_lp.select=val_macro_f1")))
    assert (
        "Tip-Adapter" not in note
        and note.endswith(" clap use no validation (the last epoch, no calibration), as in their paper.</p>")
        and "zs_lp use" not in note
    )
    assert "use no validation" not in validation_note(make_config())


def test_each_methods_selection_is_its_papers_protocol_and_what_the_run_chose_on(make_config) -> None:
    from fewclip.report.html import selections

    config = make_config(
        "methods=[zero_shot,tip_adapter,tip_adapter_f,zs_lp,coop,coop@last]",
        variants={"coop@last": {"select": "last", "calibrate": False}},
    )
    assert selections(config) == {
        "zero_shot": "paper: none; fewclip: none",
        "tip_adapter": "paper: validation split (ImageNet: test set (released code)); fewclip: validation split",
        "tip_adapter_f": "paper: test set (released code); fewclip: validation split",
        "zs_lp": "paper: validation-free; fewclip: validation-free",
        "coop": "paper: validation-free; fewclip: validation split",  # calibrated on val by default
        "coop@last": "paper: validation-free; fewclip: validation-free",
    }
    # no search and no calibration: Tip-Adapter reads no validation image; without a val split nothing does
    searchless = make_config("methods=[tip_adapter]", "tip_adapter.search=false", "tip_adapter.calibrate=false")
    assert selections(searchless) == {
        "tip_adapter": "paper: validation split (ImageNet: test set (released code)); fewclip: validation-free"
    }
    assert set(selections(make_config("methods=[coop,gda]", "splits.val_per_class=0")).values()) == {
        "paper: validation-free; fewclip: validation-free",
        "paper: validation split (ImageNet: test set (released code)); fewclip: validation-free",
    }
    # select: auto chooses on val only from MIN_VAL_PER_CLASS images a class
    lots = make_config("methods=[zs_lp]", "zs_lp.select=auto", "splits.val_per_class=10")
    assert selections(lots) == {"zs_lp": "paper: validation-free; fewclip: validation split"}
    assert selections(make_config("methods=[zs_lp]", "zs_lp.select=auto"))["zs_lp"].endswith("validation-free")
