"""fewclip compare on hand-built run directories: values against statistics computed here, the average column,
HM as CoCoOp computes it, published numbers only beside runs on the papers' protocol, the page, errors, exit codes."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from fewclip.runner.cli import main
from fewclip.report.compare import write_compare
from fewclip.report.compare_tables import build_tables, csv_rows

COOP_11 = [
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "Flowers102",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DTD",
    "EuroSAT",
    "UCF101",
]
VIT_B16 = "openai/clip-vit-base-patch16"


def make_run(
    root: Path,
    folder: str,
    dataset: str,
    rows: list[tuple[str, int, int, str, float]],
    *,
    source: str = "coop",
    sampler: str = "coop",
    subsample: str = "all",
    model_id: str = VIT_B16,
) -> Path:
    """A run directory as fewclip leaves it, for what compare reads: config.yaml and results/summary.csv."""
    run = root / folder
    (run / "results").mkdir(parents=True)
    data: dict[str, Any] = {
        "name": dataset,
        "model": {"library": "hf", "id": model_id},
        "splits": {"sampler": sampler, "subsample": subsample, "seeds": [1, 2, 3]},
    }
    data["dataset"] = (
        {"source": "coop", "name": dataset, "path": "data"}
        if source == "coop"
        else {"source": source, "path": "images"}
    )
    (run / "config.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    with open(run / "results" / "summary.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "shots", "seed", "split", "accuracy", "macro_f1", "n_eval"])
        writer.writerows([m, k, s, split, acc, 0.5, 100] for m, k, s, split, acc in rows)
    return run


def read_compare_csv(path: Path) -> dict[tuple[str, str, int, str], dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {(r["dataset"], r["method"], int(r["shots"]), r["split"]): r for r in csv.DictReader(handle)}


def few_shot_rows(coop: list[float], zero_shot: float) -> list[tuple[str, int, int, str, float]]:
    return [("zero_shot", 0, 0, "test", zero_shot)] + [
        ("coop", 16, seed, "test", acc) for seed, acc in zip((1, 2, 3), coop)
    ]


def base_new_rows(shift: float = 0.0) -> list[tuple[str, int, int, str, float]]:
    rows = [("zero_shot", 0, 0, "base", 0.70 + shift), ("zero_shot", 0, 0, "new", 0.74 + shift)]
    for seed, (base, new) in zip((1, 2, 3), [(0.80, 0.70), (0.82, 0.60), (0.78, 0.75)]):
        rows += [
            ("cocoop", 16, seed, "base", base + shift),
            ("cocoop", 16, seed, "new", new + shift),
            ("cocoop", 16, seed, "hm", 0.01),
        ]  # per-seed HM rows: compare recomputes HM from the means
    return rows + [("linear_probe", 16, 1, "base", 0.9)]


def test_values_are_mean_and_sample_std_over_seeds_with_the_average_column(tmp_path: Path) -> None:
    pets, dtd = [0.91, 0.93, 0.92], [0.60, 0.66, 0.65]
    runs = [
        make_run(tmp_path, "pets", "OxfordPets", few_shot_rows(pets, 0.89)),
        make_run(tmp_path, "dtd", "DTD", few_shot_rows(dtd, 0.44)),
    ]
    written = write_compare(runs, tmp_path / "out")
    table = read_compare_csv(written["csv"])
    for name, values in (("OxfordPets", pets), ("DTD", dtd)):
        row = table[(name, "coop", 16, "test")]
        assert float(row["mean"]) == pytest.approx(100 * statistics.mean(values), abs=1e-4)
        assert float(row["std"]) == pytest.approx(100 * statistics.stdev(values), abs=1e-4)
        assert (row["n_seeds"], row["protocol"], row["backbone"]) == ("3", "few_shot", VIT_B16)
    average = table[("Average (2)", "coop", 16, "test")]
    assert float(average["mean"]) == pytest.approx(50 * (statistics.mean(pets) + statistics.mean(dtd)), abs=1e-4)
    assert average["std"] == "" and average["n_seeds"] == ""
    assert float(table[("Average (2)", "zero_shot", 0, "test")]["mean"]) == pytest.approx(66.5, abs=1e-4)
    page = written["html"].read_text(encoding="utf-8")
    assert "<th>Average (2)</th>" in page and "Average (11)" not in page
    cell = re.search(r'data-dataset="DTD" data-method="coop" data-shots="16" data-split="test">([^<]*)<', page)
    assert cell and cell.group(1) == f"{100 * statistics.mean(dtd):.2f} ± {100 * statistics.stdev(dtd):.2f}"


def test_hm_is_the_harmonic_mean_of_mean_base_and_mean_new(tmp_path: Path) -> None:
    run = make_run(tmp_path, "pets", "OxfordPets", base_new_rows(), subsample="base2new")
    table = read_compare_csv(write_compare([run], tmp_path / "out")["csv"])
    base, new = statistics.mean([0.80, 0.82, 0.78]), statistics.mean([0.70, 0.60, 0.75])
    hm = table[("OxfordPets", "cocoop", 16, "hm")]
    assert float(hm["mean"]) == pytest.approx(100 * 2 * base * new / (base + new), abs=1e-4)
    per_seed = statistics.mean(2 * b * n / (b + n) for b, n in [(0.80, 0.70), (0.82, 0.60), (0.78, 0.75)])
    assert abs(float(hm["mean"]) - 100 * per_seed) > 0.05  # not the mean of per-seed HMs
    assert hm["std"] == "" and hm["protocol"] == "base2new"
    assert float(table[("OxfordPets", "cocoop", 16, "new")]["std"]) == pytest.approx(
        100 * statistics.stdev([0.70, 0.60, 0.75]), abs=1e-4
    )
    # a head with base results only (a linear probe) has base and no new / HM
    assert ("OxfordPets", "linear_probe", 16, "base") in table
    assert ("OxfordPets", "linear_probe", 16, "hm") not in table


def eleven_base_new_runs(root: Path, **kwargs: Any) -> list[Path]:
    return [
        make_run(root, name.lower(), name, base_new_rows(0.001 * i), subsample="base2new", **(kwargs if i == 0 else {}))
        for i, name in enumerate(COOP_11)
    ]


def test_published_numbers_sit_beside_the_average_of_the_11_on_the_papers_protocol(tmp_path: Path) -> None:
    written = write_compare(eleven_base_new_runs(tmp_path), tmp_path / "out")
    table = read_compare_csv(written["csv"])
    average = {split: table[("Average (11)", "cocoop", 16, split)] for split in ("base", "new", "hm")}
    assert [average[s]["reference"] for s in ("base", "new", "hm")] == ["80.47", "71.69", "75.83"]
    assert "CVPR 2022, Table 1(a), ViT-B/16" in average["hm"]["reference_source"]
    assert table[("Average (11)", "zero_shot", 0, "base")]["reference"] == "69.34"
    # the average's HM is the HM of the averaged base and new, as CoCoOp's average row
    base, new = float(average["base"]["mean"]), float(average["new"]["mean"])
    assert float(average["hm"]["mean"]) == pytest.approx(2 * base * new / (base + new), abs=1e-3)
    per_dataset = {key: row["reference"] for key, row in table.items() if key[0] != "Average (11)" and row["reference"]}
    assert per_dataset == {  # CoCoOp's Table 1(b): ImageNet
        ("ImageNet", "zero_shot", 0, "base"): "72.43",
        ("ImageNet", "zero_shot", 0, "new"): "68.14",
        ("ImageNet", "zero_shot", 0, "hm"): "70.22",
        ("ImageNet", "cocoop", 16, "base"): "75.98",
        ("ImageNet", "cocoop", 16, "new"): "70.43",
        ("ImageNet", "cocoop", 16, "hm"): "73.10",
    }
    page = written["html"].read_text(encoding="utf-8")
    refs = re.findall(r'<span class="ref" data-dataset="([^"]*)" data-method="([^"]*)"[^>]*>paper ([0-9.]+)', page)
    assert sorted(refs) == sorted(
        [("Average (11)", "cocoop", v) for v in ("80.47", "71.69", "75.83")]
        + [("Average (11)", "zero_shot", v) for v in ("69.34", "74.22", "71.70")]
        + [("ImageNet", "cocoop", v) for v in ("75.98", "70.43", "73.10")]
        + [("ImageNet", "zero_shot", v) for v in ("72.43", "68.14", "70.22")]
    )
    assert "Conditional Prompt Learning for Vision-Language Models, CVPR 2022, Table 1(a), ViT-B/16" in page
    # the protocol beside every number: the published number's, and each method's (its paper's, fewclip's)
    assert {average[s]["reference_selection"] for s in ("base", "new", "hm")} == {"validation-free"}
    assert table[("Average (11)", "zero_shot", 0, "base")]["reference_selection"] == "none"
    assert {row["selection"] for key, row in table.items() if key[1] == "cocoop"} == {
        "paper: validation-free; fewclip: validation split"  # CoCoOp's last epoch; fewclip calibrated on val
    }
    assert (
        table[("DTD", "linear_probe", 16, "base")]["selection"]
        == "paper: few-shot validation; fewclip: validation split"
    )
    assert table[("DTD", "zero_shot", 0, "new")]["selection"] == "paper: none; fewclip: none"
    assert re.search(r'data-split="hm">paper 75\.83 \[\d\], validation-free</span>', page)
    # the gap to the paper's number, flagged when it is larger than the seeds' spread (no spread on HM, averages)
    for key, row in table.items():
        if not row["reference"]:
            assert row["gap"] == row["gap_beyond_spread"] == ""
            continue
        assert float(row["gap"]) == pytest.approx(float(row["mean"]) - float(row["reference"]), abs=0.006)
        if row["std"] == "":
            assert row["gap_beyond_spread"] == "", key
        else:
            assert row["gap_beyond_spread"] == ("yes" if abs(float(row["gap"])) > float(row["std"]) else "no"), key
    imagenet = table[("ImageNet", "cocoop", 16, "base")]
    assert imagenet["std"] and imagenet["gap_beyond_spread"] in ("yes", "no")
    flagged = [row for row in table.values() if row["gap_beyond_spread"] == "yes"]
    assert len(re.findall(r'<span class="gap-beyond">gap [+-][0-9.]+: beyond the seeds', page)) == len(flagged)
    assert page.count('<th class="text">selection</th>') == 1
    assert '<td class="text">paper: validation-free; fewclip: validation split</td>' in page


@pytest.mark.parametrize("change", [{"sampler": "fewclip"}, {"model_id": "openai/clip-vit-base-patch32"}])
def test_no_published_number_when_one_run_leaves_the_papers_protocol(tmp_path: Path, change: dict[str, str]) -> None:
    runs = eleven_base_new_runs(tmp_path, **change)
    tables = build_tables(runs)
    assert all(row[9] == "" for row in csv_rows(tables))
    page = write_compare(runs, tmp_path / "out")["html"].read_text(encoding="utf-8")
    assert 'class="ref"' not in page and "No run matched a published number" in page


def test_ten_datasets_make_average_10_without_a_published_number(tmp_path: Path) -> None:
    runs = eleven_base_new_runs(tmp_path)[:10]
    rows = csv_rows(build_tables(runs))
    assert {r[0] for r in rows if r[0].startswith("Average")} == {"Average (10)"}
    assert all(r[9] == "" for r in rows if r[0] != "ImageNet")  # only ImageNet has published per-dataset numbers


def test_a_per_dataset_published_number_matches_only_runs_on_the_papers_protocol(tmp_path: Path) -> None:
    published = (
        "paper,table,backbone,protocol,dataset,method,shots,split,value,selection,verified_from\n"
        "Test paper,Table 9,ViT-B/16,few_shot,OxfordPets,CoOp,16,test,91.00,validation-free,here\n"
        "Test paper,Table 9,ViT-B/16,few_shot,DTD,CoOp,16,test,65.00,validation-free,here\n"
    )
    rows = [("coop", 16, 1, "test", 0.9), ("coop@n4", 16, 1, "test", 0.8), ("coop", 8, 1, "test", 0.85)]
    runs = [make_run(tmp_path, "pets", "OxfordPets", rows), make_run(tmp_path, "dtd", "DTD", rows, sampler="fewclip")]
    found = {(r[0], r[1], r[2]): r[9] for r in csv_rows(build_tables(runs, published))}
    assert found[("OxfordPets", "coop", 16)] == "91.00"
    assert found[("OxfordPets", "coop@n4", 16)] == "" and found[("OxfordPets", "coop", 8)] == ""  # variant, budget
    assert found[("DTD", "coop", 16)] == ""  # fewclip's own sampler: not the sets the paper ran on


def imagenet_run_with_targets(root: Path, folder: str, targets: dict[str, str]) -> Path:
    """An ImageNet run with eval_on targets (label -> protocol): CoOp at 16 shots on the source and each target."""
    rows = [("coop", 16, seed, split, 0.6) for seed in (1, 2, 3) for split in ("test", *targets)]
    run = make_run(root, folder, "ImageNet", rows)
    entries = [{"target": t, "source": "ImageNet", "protocol": p, "cannot_transfer": []} for t, p in targets.items()]
    (run / "results" / "targets.json").write_text(json.dumps({"targets": entries}), encoding="utf-8")
    return run


def test_shipped_target_numbers_sit_beside_a_run_from_imagenet_and_their_average_only_over_the_papers_targets(
    tmp_path: Path,
) -> None:
    """The shipped domain-generalisation and cross-dataset rows (published.csv) reach compare's target tables;
    the mean over the targets gets the paper's only when the run's targets are the papers' (all 10 here)."""
    others = {d: "cross_dataset" for d in COOP_11[1:]}
    full = imagenet_run_with_targets(tmp_path, "full", {"ImageNetV2": "domain_generalisation", **others})
    found = {(r[0], r[3]): r[9] for r in csv_rows(build_tables([full])) if r[1] == "coop"}
    assert found[("ImageNetV2", "domain_generalisation")] == "64.20"
    assert found[("ImageNet", "cross_dataset")] == "71.51" and found[("EuroSAT", "cross_dataset")] == "46.39"
    assert found[("Average (targets)", "cross_dataset")] == "63.88"  # the paper's 10 targets
    assert found[("Average (targets)", "domain_generalisation")] == ""  # one variant of four: not the paper's mean
    part = imagenet_run_with_targets(tmp_path, "part", {"EuroSAT": "cross_dataset", "DTD": "cross_dataset"})
    found = {(r[0], r[3]): r[9] for r in csv_rows(build_tables([part])) if r[1] == "coop"}
    assert found[("EuroSAT", "cross_dataset")] == "46.39" and found[("Average (targets)", "cross_dataset")] == ""


def test_other_datasets_are_named_by_the_config_and_the_page_is_escaped_and_self_contained(tmp_path: Path) -> None:
    name, method = "<script>alert(1)</script> & co", '<b onclick="x">m</b>'
    run = make_run(tmp_path, "mine", name, [(method, 4, 1, "test", 0.5)], source="folder", sampler="fewclip")
    written = write_compare([run], tmp_path / "out")
    page = written["html"].read_text(encoding="utf-8")
    assert name not in page and method not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "&lt;b onclick=&quot;x&quot;&gt;m&lt;/b&gt;" in page
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="', page)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert read_compare_csv(written["csv"])[(name, method, 4, "test")]["mean"] == "50.0000"


def test_cli_writes_both_files_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, "pets", "OxfordPets", few_shot_rows([0.9, 0.9, 0.9], 0.8))
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.csv").is_file() and (tmp_path / "cmp" / "compare.html").is_file()
    assert str(tmp_path / "cmp" / "compare.html") in capsys.readouterr().out


def test_a_folder_that_is_not_a_run_is_named_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_run(tmp_path, "pets", "OxfordPets", few_shot_rows([0.9, 0.9, 0.9], 0.8))
    empty = tmp_path / "photos"
    empty.mkdir()
    assert main(["compare", str(good), str(empty), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert f"{empty} is not a finished fewclip run: config.yaml and results/summary.csv not found" in err
    assert not (tmp_path / "cmp").exists()  # nothing written when a run cannot be read
    (empty / "config.yaml").write_text("dataset: {source: folder, path: x}\n", encoding="utf-8")
    assert main(["compare", str(empty), "--out", str(tmp_path / "cmp")]) == 2
    assert "results/summary.csv not found" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: no such directory" in capsys.readouterr().err


def test_two_runs_of_one_dataset_and_protocol_are_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_run(tmp_path, "a", "DTD", few_shot_rows([0.6, 0.6, 0.6], 0.4))
    second = make_run(tmp_path, "b", "DTD", few_shot_rows([0.7, 0.7, 0.7], 0.4))
    assert main(["compare", str(first), str(second), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert str(first) in err and str(second) in err and "one run per dataset" in err
    # the same dataset under another protocol is another table, not a clash
    third = make_run(tmp_path, "c", "DTD", base_new_rows(), subsample="base2new")
    tables = build_tables([first, third])
    assert [(t.protocol, t.datasets) for t in tables] == [("few_shot", ["DTD"]), ("base2new", ["DTD"])]


def test_two_datasets_sharing_a_name_are_told_that_name_is_the_clash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_run(tmp_path, "a", "folder", few_shot_rows([0.6, 0.6, 0.6], 0.4), source="folder", sampler="fewclip")
    second = make_run(tmp_path, "b", "folder", few_shot_rows([0.7, 0.7, 0.7], 0.4), source="folder", sampler="fewclip")
    config = yaml.safe_load((second / "config.yaml").read_text(encoding="utf-8"))
    config["dataset"]["path"] = "other-images"
    (second / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["compare", str(first), str(second), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert f"{first} and {second} both have `name: folder`" in err
    assert "but read different datasets (dataset.path: 'images' -> 'other-images')" in err
    assert f"fewclip report {second} name=<another name>" in err


def test_the_selection_follows_each_runs_config_and_the_papers_dataset_exceptions(tmp_path: Path) -> None:
    """GDA's released code chose alpha on ImageNet's test set (val features = test features), on val elsewhere; a
    run told to keep the last epoch without calibration read no validation image."""
    rows = [("gda", 16, 1, "test", 0.7), ("coop", 16, 1, "test", 0.7), ("coop@last", 16, 1, "test", 0.7)]
    runs = [make_run(tmp_path, name.lower(), name, rows) for name in ("ImageNet", "DTD")]
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["variants"] = {"coop@last": {"select": "last", "calibrate": False}}
        config["gda"] = {"search": True, "calibrate": False}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    table = read_compare_csv(write_compare(runs, tmp_path / "out")["csv"])
    assert (
        table[("ImageNet", "gda", 16, "test")]["selection"]
        == "paper: test set (released code); fewclip: validation split"
    )
    assert table[("DTD", "gda", 16, "test")]["selection"] == "paper: validation split; fewclip: validation split"
    assert table[("Average (2)", "gda", 16, "test")]["selection"] == (
        "paper: validation split (ImageNet: test set (released code)); fewclip: validation split"
    )
    assert table[("DTD", "coop@last", 16, "test")]["selection"] == "paper: validation-free; fewclip: validation-free"
    assert table[("DTD", "coop", 16, "test")]["selection"] == "paper: validation-free; fewclip: validation split"
