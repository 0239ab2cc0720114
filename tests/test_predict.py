"""Predicting with a saved head: the same labels as the run's own predictions, unreadable images named,
--out files, choosing a head, and what happens when the asked-for head was not trained."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import fewclip
from fewclip.runner import pipeline
from fewclip.runner.cli import main
from fewclip.data.images import read_image
from fewclip.runner.predict import HeadNotTrained, choose_head, classes_note, expand_images, trained_heads

PROMPT_LEARNERS = ("coop.epochs=2", "coop.n_ctx=4", "cocoop.epochs=2")
NO_FIGURES = "output.figures=false"  # figures and saliency are not what these tests are about, and slow


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def images(shapes_dir: Path, tmp_path: Path) -> tuple[Path, dict[Path, str], Path]:
    """A folder with the test images (in class subfolders), one corrupt PNG and a non-image file.

    Returns (folder, copied image -> the path the run recorded for it, the corrupt image)."""
    folder = tmp_path / "to_classify"
    copies: dict[Path, str] = {}
    for source in sorted((shapes_dir / "test").rglob("*.png")):
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        copies[target] = str(source)
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "notes.txt").write_text("not an image")
    return folder, copies, broken


def run_dir(config: Any) -> Path:
    pipeline.run(config)
    return Path(config.output.dir)


def test_each_head_predicts_the_runs_own_labels_and_names_the_unreadable_image(
    make_config: Callable[..., Any], images: tuple[Path, dict[Path, str], Path]
) -> None:
    root = run_dir(
        make_config(
            "methods=[zero_shot,linear_probe,coop,cocoop]", "few_shot.shots=[1,2]", *PROMPT_LEARNERS, NO_FIGURES
        )
    )
    folder, copies, broken = images
    for method, shots, seed in [("zero_shot", 0, 0), ("linear_probe", 1, 1), ("coop", 2, 1), ("cocoop", 2, 1)]:
        classifier = fewclip.load_classifier(root, method=method, shots=shots, seed=seed)
        results = classifier.predict([folder], top_k=2)
        assert [r.path for r in results] == sorted(str(p) for p in [*copies, broken])  # notes.txt skipped
        bad = [r for r in results if r.error is not None]
        assert [r.path for r in bad] == [str(broken)] and str(broken) in bad[0].error and bad[0].top_k == []
        saved = {r["path"]: r for r in read_rows(root / "predictions" / method / f"shot_{shots}-seed_{seed}-test.csv")}
        for result in results:
            if result.error is not None:
                continue
            expected = saved[copies[Path(result.path)]]
            assert result.label == expected["pred_name"]
            assert result.top_k[0][1] == pytest.approx(float(expected["confidence"]), abs=1e-4)
            probabilities = [p for _, p in result.top_k]
            assert len(result.top_k) == 2 and probabilities == sorted(probabilities, reverse=True)
            assert sum(probabilities) <= 1 + 1e-6


def test_all_classes_asked_for_sum_to_one(make_config: Callable[..., Any], shapes_dir: Path) -> None:
    root = run_dir(make_config("few_shot.shots=[1]", NO_FIGURES))
    image = next((shapes_dir / "test").rglob("*.png"))
    (result,) = fewclip.load_classifier(root, method="linear_probe").predict([image], top_k=10)
    assert len(result.top_k) == 3  # capped at the number of classes
    assert sum(p for _, p in result.top_k) == pytest.approx(1.0, abs=1e-5)
    assert {label for label, _ in result.top_k} == {"red circle", "green square", "blue triangle"}


def test_defaults_pick_the_first_method_the_largest_budget_and_the_smallest_seed() -> None:
    heads = [("coop", 1, 1), ("coop", 2, 3), ("coop", 2, 2), ("linear_probe", 4, 1), ("zero_shot", 0, 0)]
    assert choose_head(heads, ["zero_shot", "coop"]) == ("zero_shot", 0, 0)
    assert choose_head(heads, ["coop", "zero_shot"]) == ("coop", 2, 2)
    assert choose_head(heads, ["zero_shot", "coop"], shots=1) == ("coop", 1, 1)  # zero-shot has no 1-shot head
    assert choose_head(heads, ["coop"], method="linear_probe") == ("linear_probe", 4, 1)
    assert choose_head(heads, ["coop"], seed=3) == ("coop", 2, 3)
    with pytest.raises(HeadNotTrained, match=r"shots=16.*trained heads: coop shots=1 seed=1, coop shots=2 seed=3"):
        choose_head(heads, ["coop"], shots=16)


def test_trained_heads_and_default_classifier_of_a_run(make_config: Callable[..., Any]) -> None:
    root = run_dir(make_config("few_shot.shots=[1,2]", "splits.seeds=[2,1]", NO_FIGURES))
    (root / "heads" / "linear_probe" / "shot_2-seed_1.ckpt.safetensors").write_bytes(b"")  # not a head
    assert trained_heads(root) == [
        ("linear_probe", 1, 1),
        ("linear_probe", 1, 2),
        ("linear_probe", 2, 1),
        ("linear_probe", 2, 2),
        ("zero_shot", 0, 0),
    ]
    recommendation = json.loads((root / "results" / "recommendation.json").read_text())
    default = fewclip.load_classifier(root)  # the report's recommended head, and why
    assert default.unit == f"{recommendation['method']}/shot_{recommendation['shots']}-seed_{recommendation['seed']}"
    assert (
        default.why == f"the run's recommendation ({root / 'results' / 'recommendation.json'}): {recommendation['why']}"
    )
    (root / "results" / "recommendation.json").unlink()  # an older run: the first method's largest budget
    fallback = fewclip.load_classifier(root)
    assert fallback.unit == "zero_shot/shot_0-seed_0" and fallback.why.startswith("no recommendation in the run")
    assert fewclip.load_classifier(root, method="linear_probe").unit == "linear_probe/shot_2-seed_1"


def test_expand_images_is_recursive_sorted_and_keeps_named_files(
    images: tuple[Path, dict[Path, str], Path], tmp_path: Path
) -> None:
    folder, copies, broken = images
    named = tmp_path / "named.txt"
    assert expand_images([named, folder]) == [named, *sorted([*copies, broken])]


@pytest.fixture()
def small_run(make_config: Callable[..., Any]) -> Path:
    return run_dir(make_config("few_shot.shots=[1,2]", "linear_probe.epochs=5", NO_FIGURES))


def test_cli_prints_top_k_and_writes_csv_and_json(
    small_run: Path, images: tuple[Path, dict[Path, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, copies, broken = images
    expected = fewclip.load_classifier(small_run, method="linear_probe", shots=1).predict([folder], top_k=2)
    capsys.readouterr()
    for out in (tmp_path / "x.csv", tmp_path / "x.json"):
        assert (
            main(
                [
                    "-q",
                    "predict",
                    str(small_run),
                    str(folder),
                    "--method",
                    "linear_probe",
                    "--shots",
                    "1",
                    "--top-k",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        captured = capsys.readouterr()
        assert f"fewclip: skipped {broken}: cannot decode image" in captured.err
        assert "%|" not in captured.err  # quiet: no progress bar
        assert "fewclip: predicting with linear_probe/shot_1-seed_1: as asked\n" in captured.err
        first = next(r for r in expected if r.error is None)
        (label, probability), _ = first.top_k
        assert f"{first.path}\n  {probability:.4f}  {label}\n" in captured.out
    rows = read_rows(tmp_path / "x.csv")
    (bad,) = [row for row in rows if row["error"]]
    assert (bad["path"], bad["rank"], bad["label"], bad["probability"]) == (str(broken), "", "", "")
    assert bad["error"].startswith(f"{broken}: cannot decode image")
    assert [row for row in rows if not row["error"]] == [
        {"path": r.path, "rank": str(k), "label": label, "probability": f"{p:.6f}", "error": ""}
        for r in expected
        for k, (label, p) in enumerate(r.top_k, 1)
    ]
    written = json.loads((tmp_path / "x.json").read_text())
    assert (written["method"], written["shots"], written["seed"]) == ("linear_probe", 1, 1)
    assert [p["path"] for p in written["predictions"]] == [r.path for r in expected]
    assert [p["error"] is None for p in written["predictions"]] == [r.error is None for r in expected]
    for entry, result in zip(written["predictions"], expected):
        assert [(t["label"], t["probability"]) for t in entry["top_k"]] == result.top_k


def test_cli_lists_the_trained_heads_when_the_asked_one_is_missing(
    small_run: Path, shapes_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, asked in [
        (["--shots", "16"], "shots=16"),
        (["--method", "cocoop"], "method=cocoop"),
        (["--method", "linear_probe", "--seed", "7"], "method=linear_probe, seed=7"),
    ]:
        assert main(["-q", "predict", str(small_run), str(shapes_dir / "test"), *args]) == 2
        err = capsys.readouterr().err
        assert (
            f"fewclip: error: no trained head for {asked}; trained heads: linear_probe shots=1 seed=1, "
            "linear_probe shots=2 seed=1, zero_shot shots=0 seed=0\n" in err
        )


def test_cli_usage_errors_and_nothing_classified(
    small_run: Path, images: tuple[Path, dict[Path, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _, broken = images
    assert main(["-q", "predict", str(small_run), str(folder), "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .csv or .json" in capsys.readouterr().err
    assert main(["-q", "predict", str(tmp_path / "no_run"), str(folder)]) == 2
    assert "not a fewclip run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["-q", "predict", str(small_run), str(tmp_path / "empty")]) == 2
    assert "no images in" in capsys.readouterr().err
    assert main(["-q", "predict", str(small_run), str(broken), str(tmp_path / "missing.png")]) == 1
    err = capsys.readouterr().err
    assert str(broken) in err and f"{tmp_path / 'missing.png'}: cannot read file" in err


def test_predicted_probabilities_equal_softmax_of_the_heads_logits(small_run: Path, shapes_dir: Path) -> None:
    classifier = fewclip.load_classifier(small_run, method="linear_probe", shots=2)
    paths = sorted((shapes_dir / "test").rglob("*.png"))[:5]
    results = classifier.predict(paths, top_k=3)
    backbone = classifier.backbone
    pixels = np.stack([backbone.transform(read_image(p)) for p in paths])
    logits = classifier.head.logits(backbone.encode_images(torch.from_numpy(pixels)))
    expected = torch.softmax(logits, -1).numpy()
    for result, row in zip(results, expected):
        by_label = dict(result.top_k)
        np.testing.assert_allclose([by_label[name] for name in classifier.class_names], row, atol=1e-6)


def test_a_base_to_new_head_says_it_knows_only_the_base_classes() -> None:
    assert classes_note("all", ["a", "b"]) == ""
    assert classes_note("base2new", ["red circle", "green square"]) == (
        "this run trained on the base classes only (splits.subsample=base2new); the head knows 2 classes: "
        "red circle, green square"
    )


def test_cli_out_in_an_unwritable_place_is_a_clear_error(
    small_run: Path, images: tuple[Path, dict[Path, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _, _ = images
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # root ignores read-only modes; a file where the folder should be does not
    out = blocker / "predictions.csv"
    assert main(["-q", "predict", str(small_run), str(folder), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"fewclip: error: --out {out}: could not write the predictions" in captured.err
    assert "choose a writable path" in captured.err and "Traceback" not in captured.err
    assert captured.out  # the predictions were still printed


def test_a_zero_shot_only_run_has_an_answer_and_predict_uses_its_recommendation(
    make_config: Callable[..., Any], shapes_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = run_dir(make_config("methods=[zero_shot]", NO_FIGURES))
    answer = json.loads((root / "results" / "answer.json").read_text())
    accuracy = float(read_rows(root / "results" / "summary.csv")[0]["accuracy"])
    assert "No method has results" not in answer["headline"]
    assert "only zero_shot has results at 0 shots" in answer["headline"]
    rec = answer["recommendation"]
    assert (rec["method"], rec["shots"], rec["seed"]) == ("zero_shot", 0, 0)
    assert rec["accuracy_mean"] == pytest.approx(accuracy, abs=1e-6)
    assert main(["-q", "predict", str(root), str(shapes_dir / "test" / "red_circle")]) == 0
    err = capsys.readouterr().err
    assert "fewclip: predicting with zero_shot/shot_0-seed_0: the run's recommendation (" in err
    assert "run `fewclip report`" not in err


def test_a_fifo_among_the_images_is_skipped_by_name_and_never_read(
    small_run: Path, shapes_dir: Path, watched_fifo, capsys: pytest.CaptureFixture[str]
) -> None:
    good = sorted((shapes_dir / "test").rglob("*.png"))[0]
    shutil.copy(good, watched_fifo.path.parent / "good.png")
    skipped = f"fewclip: skipped {watched_fifo.path}: not a regular file (a FIFO); only regular image files are read\n"
    for given, classified in (
        ([watched_fifo.path, good], good),  # named, or found in a folder
        ([watched_fifo.path.parent], watched_fifo.path.parent / "good.png"),
    ):
        assert main(["-q", "predict", str(small_run), *map(str, given)]) == 0
        captured = capsys.readouterr()
        assert skipped in captured.err
        lines = captured.out.splitlines()
        assert lines[0] == str(classified) and len(lines) == 1 + 3  # the good image, its 3 classes
    assert main(["-q", "predict", str(small_run), str(watched_fifo.path)]) == 1  # nothing classified
    assert skipped in capsys.readouterr().err
    assert not watched_fifo.was_read.is_set()
