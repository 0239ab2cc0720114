"""The caption report on a hand-made, consistent run directory: table numbers, winner rule, escaping,
self-containment, and runs that lack files."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewclip.runner.layout import REFERENCE_SEPARATOR
from fewclip.runner.layout import CAPTION_PREDICTION_COLUMNS, CAPTION_SUMMARY_COLUMNS, CaptionLayout
from fewclip.caption.metrics import text_scores
from fewclip.report.caption_page import CURVES_FILE, EXAMPLE_IMAGES, HEADLINE_FILE, write_caption_report
from fewclip.stats import mean_interval
from tests.report.browser import check_first_screen

EVIL = "<script>alert(1)</script>"
N_IMAGES = 20
COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "star")


def references(index: int) -> list[str]:
    colour, shape = COLOURS[index % 5], SHAPES[index % 4]
    return [f"a {colour} {shape} in the center", f"there is a {colour} {shape}", f"a small {colour} {shape}"]


def wrong(index: int) -> str:
    return f"a {COLOURS[(index + 1) % 5]} {SHAPES[(index + 1) % 4]} at the top"


def write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def make_run(root: Path, captions: dict[str, dict[int, list[str]]], attention: bool = True) -> CaptionLayout:
    """A run directory whose summary CIDEr / BLEU-4 come from its predictions (so the two agree);
    ``captions``: method -> seed -> the caption of each test image."""
    layout = CaptionLayout(root)
    names = [f"{i:05d}.png" for i in range(N_IMAGES)]
    for i, name in enumerate(names):
        png(layout.data / "images" / name, (10 * i, 100, 200))
    layout.split_file("test").write_text(
        json.dumps(
            {"images": [{"id": i, "file_name": n, "sha1": "0" * 40} for i, n in enumerate(names)], "annotations": []}
        )
    )
    layout.config.write_text("name: fake <b>run</b>\n")
    refs = {n: references(i) for i, n in enumerate(names)}
    summary = []
    for method, seeds in captions.items():
        for seed, texts in seeds.items():
            scores = text_scores(refs, dict(zip(names, texts)))
            clip = [0.5 + 0.01 * ((i * 7 + seed + len(method)) % 13) for i in range(N_IMAGES)]
            write_csv(
                layout.predictions(method, seed),
                CAPTION_PREDICTION_COLUMNS,
                [(n, t, REFERENCE_SEPARATOR.join(refs[n]), c) for n, t, c in zip(names, texts, clip)],
            )
            trainable = 0 if method == "untrained" else 1000 + len(method)
            summary.append(
                (
                    method,
                    seed,
                    "test",
                    scores.cider,
                    float(np.mean(clip)),
                    0.3 + 0.01 * seed + 0.001 * len(method),
                    scores.bleu4,
                    trainable,
                    0.0 if method == "untrained" else 12.5 + 3 * seed,
                    N_IMAGES,
                )
            )
            if method != "untrained":
                write_csv(
                    layout.history(method, seed),
                    ("epoch", "train_loss", "lr", "val_cider", "seconds"),
                    [(e, 3.0 / e, 1e-4, 0.2 * e + 0.01 * seed, 4.0) for e in (1, 2, 3)],
                )
            if attention and method == "adapter":
                folder = layout.attention_dir(method, seed)
                png(folder / "00001.png", (255, 0, 0))
                png(folder / "00002.png", (0, 255, 0))
                (folder / "attention.json").write_text(
                    json.dumps(
                        {
                            "layer": -1,
                            "images": [
                                {
                                    "image": "00002.png",
                                    "why": "lowest clipscore",
                                    "caption": EVIL,
                                    "clipscore": 0.1,
                                    "panel": "00002.png",
                                },
                                {
                                    "image": "00001.png",
                                    "why": "highest clipscore",
                                    "caption": "a red square",
                                    "clipscore": 0.9,
                                    "panel": "00001.png",
                                },
                            ],
                        }
                    )
                )
    write_csv(layout.summary, CAPTION_SUMMARY_COLUMNS, summary)
    return layout


def all_right(seed: int = 0) -> list[str]:
    return [references(i)[seed % 3] for i in range(N_IMAGES)]


def right_on(indices: set[int]) -> list[str]:
    return [references(i)[0] if i in indices else wrong(i) for i in range(N_IMAGES)]


def separated_run(root: Path, seeds=(0, 1)) -> CaptionLayout:
    return make_run(
        root,
        {
            "untrained": {s: [EVIL if i == 0 else "" for i in range(N_IMAGES)] for s in seeds},
            "adapter": {s: all_right(s) for s in seeds},
            "lora": {s: right_on(set(range(3 + s))) for s in seeds},
        },
    )


def html_of(layout: CaptionLayout) -> str:
    return write_caption_report(layout).read_text(encoding="utf-8")


def test_table_is_mean_and_std_of_the_summary(tmp_path: Path) -> None:
    layout = separated_run(tmp_path)
    text = html_of(layout)
    with open(layout.summary, newline="") as handle:
        rows = list(csv.DictReader(handle))
    answer = json.loads(layout.answer.read_text())
    for method in ("untrained", "adapter", "lora"):
        for metric, digits in (("cider", 3), ("clipscore", 3), ("refclipscore", 3), ("bleu4", 3), ("train_seconds", 1)):
            values = np.array([float(r[metric]) for r in rows if r["method"] == method])
            mean, std = values.mean(), values.std(ddof=1)
            shown = re.search(rf'data-method="{method}" data-metric="{metric}">([^<]*)</span>', text).group(1)
            assert shown == f"{mean:.{digits}f} ± {std:.{digits}f}", (method, metric)
            assert answer["methods"][method][f"{metric}_mean"] == pytest.approx(mean, abs=1e-12)
            assert answer["methods"][method][f"{metric}_std"] == pytest.approx(std, abs=1e-12)
    assert answer["methods"]["lora"]["trainable_params"] == 1004 and "1,004" in text
    # the untrained baseline is the table's first row
    assert (
        text.index('data-method="untrained"') < text.index('data-method="adapter"') < text.index('data-method="lora"')
    )


def test_winner_named_when_the_paired_test_separates(tmp_path: Path) -> None:
    layout = separated_run(tmp_path)
    text = html_of(layout)
    answer = json.loads(layout.answer.read_text())
    assert answer["winner"] == "adapter" and answer["indistinguishable"] == []
    assert answer["headline"].startswith("adapter captions best: CIDEr")
    lora = next(c for c in answer["comparisons"] if c["other"] == "lora")
    methods = answer["methods"]
    # the test's statistic is the table's difference (per-image CIDEr averages to the corpus CIDEr)
    assert lora["difference"] == pytest.approx(
        methods["adapter"]["cider_mean"] - methods["lora"]["cider_mean"], abs=1e-9
    )
    assert lora["p_value"] < 0.05 and lora["n_images"] == N_IMAGES
    assert '<b class="winner">best</b>' in text and "The untrained decoder" in answer["headline"]


def tied_run(root: Path) -> CaptionLayout:
    """adapter right on 11 images, lora on 10 (different ones): adapter leads, the test cannot separate them."""
    return make_run(
        root,
        {
            "untrained": {0: [""] * N_IMAGES},
            "adapter": {0: right_on(set(range(11)))},
            "lora": {0: right_on(set(range(5, 15)))},
        },
    )


def test_no_winner_when_the_leaders_are_not_separated(tmp_path: Path) -> None:
    layout = tied_run(tmp_path)
    text = html_of(layout)
    answer = json.loads(layout.answer.read_text())
    assert answer["winner"] is None and answer["leader"] == "adapter"
    assert answer["indistinguishable"] == ["adapter", "lora"]
    assert (
        "adapter and lora are indistinguishable by CIDEr on this test set (20 test images, 1 seed" in answer["headline"]
    )
    assert answer["headline"].endswith(
        "from lora (3.379; p = 1). The untrained decoder (fresh cross-attention, no tuning) scores 0.000."
    )
    untrained = next(c for c in answer["comparisons"] if c["other"] == "untrained")
    assert untrained["p_value"] < 0.05  # the baseline is separated; only lora is not
    assert '<b class="winner">' not in text


def test_single_seed_is_a_paired_test_over_images(tmp_path: Path) -> None:
    layout = separated_run(tmp_path, seeds=(3,))
    text = html_of(layout)
    answer = json.loads(layout.answer.read_text())
    assert answer["winner"] == "adapter" and answer["methods"]["adapter"]["seeds"] == [3]
    assert "1 seed;" in answer["headline"]
    shown = re.search(r'data-method="lora" data-metric="cider">([^<]*)</span>', text).group(1)
    assert shown.endswith("± 0.000")


def test_escaped_and_self_contained(tmp_path: Path) -> None:
    layout = separated_run(tmp_path)
    text = html_of(layout)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # in a prediction and in attention.json
    assert "<script" not in text.lower() and "&lt;b&gt;run&lt;/b&gt;" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)|url\(|@import|<link""", text, re.I)
    images = re.findall(r'<img[^>]*src="([^"]*)"', text)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    # the first screen's figure, thumbnails of the example images, the training curves, two attention panels
    # (adapter's, the winner's: shown once, in the examples up front)
    assert len(images) == 1 + EXAMPLE_IMAGES + 1 + 2
    assert (layout.results / CURVES_FILE).is_file() and (layout.results / HEADLINE_FILE).is_file()
    assert text.index("highest clipscore") < text.index("lowest clipscore")  # panels in a fixed order


def test_missing_attention_and_history_are_listed(tmp_path: Path) -> None:
    layout = separated_run(tmp_path, seeds=(0,))
    (layout.results / "history" / "lora" / "seed_0.csv").unlink()
    text = html_of(layout)
    assert "No attention maps (results/attention/lora/seed_0 has no attention.json)" in text
    assert "file not found: results/attention/lora/seed_0/attention.json" in text
    assert "file not found: results/history/lora/seed_0.csv" in text
    assert "file not found: results/attention/untrained" not in text  # the baseline's maps are optional


def test_unusable_attention_json_is_reported(tmp_path: Path) -> None:
    layout = separated_run(tmp_path, seeds=(0,))
    path = layout.attention_dir("adapter", 0) / "attention.json"
    path.write_text(
        json.dumps(
            {
                "layer": 0,
                "images": [
                    {"image": "x", "why": "fixed", "caption": "c", "clipscore": 1, "panel": "../../../../config.yaml"}
                ],
            }
        )
    )
    text = html_of(layout)
    assert "results/attention/adapter/seed_0/attention.json is unusable" in text
    assert "must be a file name inside the folder" in text


def test_missing_predictions_prevent_a_winner(tmp_path: Path) -> None:
    layout = separated_run(tmp_path, seeds=(0,))
    layout.predictions("lora", 0).unlink()
    text = html_of(layout)
    answer = json.loads(layout.answer.read_text())
    assert answer["winner"] is None and "lora" in answer["indistinguishable"]
    assert "no per-image predictions to compare" in answer["headline"]
    assert "file not found: results/predictions/lora/seed_0-test.csv" in text


def test_without_summary_the_error_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"caption_summary.csv not found: run `fewclip caption evaluate`"):
        write_caption_report(CaptionLayout(tmp_path))


def test_thumbnails_follow_the_split_files_path_field(tmp_path: Path) -> None:
    layout = separated_run(tmp_path, seeds=(0,))
    split = json.loads(layout.split_file("test").read_text())
    for entry in split["images"]:
        (layout.data / "images" / entry["file_name"]).rename(layout.data / f"moved-{entry['file_name']}")
        entry["path"] = f"moved-{entry['file_name']}"  # relative to data/
    layout.split_file("test").write_text(json.dumps(split))
    text = html_of(layout)
    assert len(re.findall(r'<img class="thumb" src="data:image/png;base64,', text)) == EXAMPLE_IMAGES
    assert "image not found" not in text


def test_a_val_split_gets_its_own_table_after_test(tmp_path: Path) -> None:
    layout = separated_run(tmp_path, seeds=(0,))
    with open(layout.summary, newline="") as handle:
        rows = list(csv.DictReader(handle))
    val = [{**r, "split": "val", "cider": "9.5"} for r in rows if r["method"] == "lora"]
    write_csv(layout.summary, CAPTION_SUMMARY_COLUMNS, [[r[c] for c in CAPTION_SUMMARY_COLUMNS] for r in val + rows])
    text = html_of(layout)
    answer = json.loads(layout.answer.read_text())
    assert answer["split"] == "test" and answer["winner"] == "adapter"  # val never picks the winner
    assert text.index("<h3>test split</h3>") < text.index("<h3>val split</h3>")
    assert "9.500 ± 0.000" in text


def test_the_default_runs_report_embeds_every_image_it_promises(tmp_path: Path) -> None:
    """The embedded default (world source, whose split files name images relative to the run directory), made
    small: each example thumbnail, the curves and each attention panel is an embedded PNG, none missing."""
    from fewclip.runner.cli import main

    root = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "caption",
                "run",
                "default",
                "methods=[adapter]",
                "data.world_images=40",
                "training.epochs=1",
                f"output.dir={root}",
                f"cache.dir={tmp_path / 'cache'}",
            ]
        )
        == 0
    )
    layout = CaptionLayout(root)
    text = layout.report.read_text(encoding="utf-8")
    assert "image not found" not in text and "unreadable image" not in text and "no figure" not in text
    assert '<div class="missing">' not in text
    test_images = json.loads(layout.split_file("test").read_text())["images"]
    assert all(not Path(entry["file_name"]).is_absolute() for entry in test_images)  # relative to the run dir
    panels = sum(
        1
        for method in ("untrained", "adapter")
        for entry in json.loads((layout.attention_dir(method, 0) / "attention.json").read_text())["images"]
        if entry["panel"] is not None
    )
    thumbnails = min(EXAMPLE_IMAGES, len(test_images))
    sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', text)
    # the first screen's figure, examples, the training curves, the attention panels (each once)
    assert len(sources) == 1 + thumbnails + 1 + panels
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert len(re.findall(r'<img class="thumb" src="data:image/png;base64,', text)) == thumbnails


# --- the first screen ----------------------------------------------------------------------------------------


def per_image_seed_mean(layout: CaptionLayout, method: str, seeds, column: str) -> np.ndarray:
    """A method's per-image score averaged over its seeds, recomputed from the predictions CSVs."""
    per_seed = []
    for seed in seeds:
        with open(layout.predictions(method, seed), newline="") as handle:
            rows = list(csv.DictReader(handle))
        if column == "cider":
            refs = {r["image"]: r["references"].split(REFERENCE_SEPARATOR) for r in rows}
            scores = text_scores(refs, {r["image"]: r["caption"] for r in rows}).cider_per_image
            per_seed.append([scores[r["image"]] for r in rows])
        else:
            per_seed.append([float(r[column]) for r in rows])
    return np.mean(per_seed, axis=0)


def test_first_screen_is_the_plain_answer_the_figure_the_leaderboard_then_the_examples(tmp_path: Path) -> None:
    layout = separated_run(tmp_path)
    text = html_of(layout)
    answer = json.loads(layout.answer.read_text())
    methods = answer["methods"]
    for method in ("untrained", "adapter", "lora"):  # each interval is the bootstrap over the 20 images
        for metric in ("cider", "clipscore"):
            low, high = methods[method][f"{metric}_interval"]
            assert (low, high) == pytest.approx(mean_interval(per_image_seed_mean(layout, method, (0, 1), metric)))
            assert low <= methods[method][f"{metric}_mean"] + 1e-9 and methods[method][f"{metric}_mean"] <= high + 1e-9
    adapter = methods["adapter"]
    first, second, third = answer["plain"]
    assert first.startswith(
        f"adapter captions best: CIDEr {adapter['cider_mean']:.2f} (95% interval {adapter['cider_interval'][0]:.2f}"
    )
    assert (
        f"20 test images), {adapter['cider_mean'] - methods['untrained']['cider_mean']:+.2f} over the untrained"
        in first
    )
    assert second.startswith("The paired test on per-image CIDEr puts it ahead of every other method (largest p")
    clip_top = max(methods, key=lambda m: methods[m]["clipscore_mean"])
    assert f"{clip_top} {methods[clip_top]['clipscore_mean']:.2f} (95% interval" in third
    glance, rest = text.split('<section id="examples-up-front">', 1)
    assert "<details" not in glance and rest.index("highest clipscore") < rest.index("<details")
    assert [f"<p>{html.escape(s, quote=True)}</p>" in glance for s in answer["plain"]] == [True] * 3
    board = glance[glance.index('id="leaderboard"') :]
    order = [board.index(f"</span>{m}") for m in ("adapter", "lora", "untrained")]
    assert order == sorted(order)  # best CIDEr first
    assert 'adapter <b class="winner">best</b>' in board and "top" in board and "below (p" in board
    attention = rest[rest.index('<details id="caption-attention">') :]
    assert "highest clipscore" not in attention  # adapter's panels are up front, not repeated


def test_no_winner_says_whom_the_test_cannot_separate(tmp_path: Path) -> None:
    layout = tied_run(tmp_path)
    html_of(layout)
    answer = json.loads(layout.answer.read_text())
    assert answer["plain"][0].startswith("adapter leads with CIDEr")
    assert answer["plain"][1].startswith("The paired test on per-image CIDEr cannot separate it from lora (")
    assert answer["plain"][1].endswith("p = 1.000).")


@pytest.mark.slow
def test_headless_chromium_shows_the_caption_answer_figure_and_leaderboard_on_the_first_screen(
    tmp_path: Path,
) -> None:
    layout = separated_run(tmp_path / "run")
    check_first_screen(tmp_path, write_caption_report(layout))
