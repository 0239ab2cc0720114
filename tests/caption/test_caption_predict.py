"""``fewclip caption predict`` and ``fewclip.load_captioner``: the captioner with the best test CIDEr by default,
the run's captions for its test images, .json/.csv output, unreadable images reported, usage errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import fewclip
from fewclip.runner.layout import CaptionLayout
from fewclip.runner.caption_predict import CaptionerNotTrained
from fewclip.runner.cli import main
from fewclip.fileio import read_csv


@pytest.fixture()
def caption_run(world_caption_config, tmp_path: Path) -> CaptionLayout:
    config = world_caption_config("methods=[adapter,lora]", "training.epochs=2")
    config_file = tmp_path / "caption.yaml"
    config_file.write_text(config.to_yaml(), encoding="utf-8")
    assert main(["-q", "caption", "run", str(config_file)]) == 0
    return CaptionLayout(tmp_path / "run")


def test_load_captioner_picks_the_best_test_cider_and_repeats_the_run(caption_run: CaptionLayout) -> None:
    rows = [r for r in read_csv(caption_run.summary) if r["split"] == "test"]
    best = max(rows, key=lambda r: float(r["cider"]))
    captioner = fewclip.load_captioner(caption_run.root, device="cpu")
    assert (captioner.method, captioner.seed) == (best["method"], int(best["seed"]))
    assert captioner.why == f"the highest test CIDEr ({float(best['cider']):.3f}) in {caption_run.summary}"
    for method in ("adapter", "lora", "untrained"):
        chosen = fewclip.load_captioner(caption_run.root, method=method)
        predicted = read_csv(caption_run.predictions(method, 0, "test"))
        assert chosen.caption([caption_run.root / p["image"] for p in predicted]) == [p["caption"] for p in predicted]
    greedy = captioner.caption([caption_run.root / p["image"] for p in predicted[:3]])
    assert captioner.caption([caption_run.root / p["image"] for p in predicted[:3]], beam=1) == greedy
    assert all(isinstance(text, str) for text in captioner.caption([caption_run.root / predicted[0]["image"]], beam=3))


def test_a_method_without_a_captioner_lists_those_there_are(caption_run: CaptionLayout) -> None:
    with pytest.raises(
        CaptionerNotTrained,
        match=r"no captioner for method=prefix; available: adapter seed 0, "
        r"lora seed 0, untrained seed 0",
    ):
        fewclip.load_captioner(caption_run.root, method="prefix")


def test_predict_cli_writes_json_and_csv(
    caption_run: CaptionLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predicted = read_csv(caption_run.predictions("lora", 0, "test"))[:2]
    images = [str(caption_run.root / p["image"]) for p in predicted]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "captions.json"
    assert (
        main(
            [
                "-q",
                "caption",
                "predict",
                str(caption_run.root),
                *images,
                str(bad),
                "--method",
                "lora",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "captioning with lora seed 0: as asked" not in captured.err  # seed not given: chosen by CIDEr
    assert "captioning with lora seed 0" in captured.err and f"skipped {bad}" in captured.err
    assert captured.out.splitlines()[:2] == [f"{path}\t{p['caption']}" for path, p in zip(images, predicted)]
    written = json.loads(out.read_text())
    assert (written["method"], written["seed"]) == ("lora", 0)
    assert [c["caption"] for c in written["captions"]] == [p["caption"] for p in predicted] + [None]
    assert written["captions"][2]["error"] and written["captions"][2]["path"] == str(bad)
    csv_out = tmp_path / "captions.csv"
    assert (
        main(
            [
                "-q",
                "caption",
                "predict",
                str(caption_run.root),
                *images,
                "--seed",
                "0",
                "--method",
                "adapter",
                "--beam",
                "2",
                "--out",
                str(csv_out),
            ]
        )
        == 0
    )
    rows = read_csv(csv_out)
    assert [r["path"] for r in rows] == images and all(r["caption"] and not r["error"] for r in rows)


def test_predict_cli_errors(caption_run: CaptionLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(caption_run.root / read_csv(caption_run.predictions("lora", 0, "test"))[0]["image"])
    assert main(["caption", "predict", str(caption_run.root), image, "--out", "x.txt"]) == 2
    assert "must end in .csv or .json" in capsys.readouterr().err
    assert main(["caption", "predict", str(caption_run.root), image, "--beam", "0"]) == 2
    assert "--beam must be >= 1" in capsys.readouterr().err
    assert main(["caption", "predict", str(tmp_path / "nowhere"), image]) == 2
    assert "is not a fewclip caption run directory" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["-q", "caption", "predict", str(caption_run.root), str(bad)]) == 1  # nothing could be captioned


def test_choose_captioner_rules(tmp_path: Path) -> None:
    from fewclip.runner.layout import CAPTION_SUMMARY_COLUMNS
    from fewclip.runner.caption_predict import choose_captioner
    from fewclip.fileio import write_csv

    layout = CaptionLayout(tmp_path)
    for method, seed in (("lora", 1), ("adapter", 0), ("adapter", 1)):
        for name in ("captioner.json", "captioner.safetensors"):
            (layout.model_dir(method, seed) / name).parent.mkdir(parents=True, exist_ok=True)
            (layout.model_dir(method, seed) / name).write_text("{}")
    (layout.model_dir("prefix", 0)).mkdir(parents=True)  # no manifest: not trained
    unit, why = choose_captioner(layout, ["adapter", "lora"], [0, 1], None, None)
    assert unit == ("adapter", 0) and why.startswith("no scores yet")
    rows = [("untrained", 0, 0.5), ("adapter", 0, 1.0), ("adapter", 1, 1.5), ("lora", 1, 2.0)]
    write_csv(
        layout.summary,
        CAPTION_SUMMARY_COLUMNS,
        [(m, s, "test", c, 0, 0, 0, 0, 0, 1) for m, s, c in rows] + [("adapter", 0, "val", 9.0, 0, 0, 0, 0, 0, 1)],
    )  # val never chooses
    assert choose_captioner(layout, ["adapter", "lora"], [0, 1], None, None) == (
        ("lora", 1),
        f"the highest test CIDEr (2.000) in {layout.summary}",
    )
    assert choose_captioner(layout, ["adapter", "lora"], [0, 1], "adapter", None) == (
        ("adapter", 1),
        f"the highest test CIDEr (1.500) in {layout.summary} among adapter's seeds",
    )
    assert choose_captioner(layout, ["adapter", "lora"], [0, 1], "adapter", 0) == (("adapter", 0), "as asked")
    with pytest.raises(CaptionerNotTrained, match="no captioner for method=prefix"):
        choose_captioner(layout, ["adapter", "lora"], [0, 1], "prefix", None)


def test_predict_skips_a_fifo_by_name_and_captions_the_other_image(
    world_caption_config, toy_pairs, watched_fifo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = world_caption_config()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")  # the untrained baseline
    good = toy_pairs[0][0]
    assert (
        main(
            [
                "-q",
                "caption",
                "predict",
                str(tmp_path / "run"),
                str(watched_fifo.path),
                str(good),
                "--method",
                "untrained",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        f"fewclip: skipped {watched_fifo.path}: not a regular file (a FIFO); only regular image files are read\n"
        in captured.err
    )
    (line,) = captured.out.splitlines()
    assert line.startswith(f"{good}\t") and line != f"{good}\t"
    assert not watched_fifo.was_read.is_set()


def test_a_run_of_the_other_kind_is_named_with_the_command_for_it(
    world_caption_config,
    make_config,
    toy_pairs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A captioning run given to `fewclip predict` (or a stage), or a classification run given to
    `fewclip caption ...`: one line naming the right command, not the other config's unknown keys."""
    caption_dir, classification_dir = tmp_path / "captioning", tmp_path / "classification"
    for folder, config in ((caption_dir, world_caption_config()), (classification_dir, make_config())):
        folder.mkdir()
        (folder / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    image = str(toy_pairs[0][0])
    cases = [
        (
            ["predict", str(caption_dir), image],
            f"{caption_dir} is a captioning run, not a classification run; use "
            f"`fewclip caption predict {caption_dir} IMAGE...`",
        ),
        (
            ["caption", "predict", str(classification_dir), image],
            f"{classification_dir} is a classification run, not a captioning run; use "
            f"`fewclip predict {classification_dir} IMAGE...`",
        ),
        (
            ["report", str(caption_dir)],
            f"{caption_dir} is a captioning run, not a classification run; use `fewclip caption report {caption_dir}`",
        ),
        (
            ["caption", "train", str(classification_dir)],
            f"{classification_dir} is a classification run, not a captioning run; use "
            f"`fewclip train {classification_dir}`",
        ),
    ]
    for args, message in cases:
        caplog.clear()
        assert main(args) == 2
        assert capsys.readouterr().err == f"fewclip: error: {message}\n"
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # no deprecation notes
