"""CLI conveniences: --version, and a stage command given a run directory instead of a config file."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

import fewclip
from fewclip.runner import pipeline
from fewclip.runner.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fewclip {fewclip.__version__}"


def test_report_of_a_run_directory_from_anywhere(
    make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config("few_shot.shots=[1]", "output.figures=false", "methods=[zero_shot]")
    pipeline.run(config)
    run_dir = Path(config.output.dir)
    (run_dir / "report.html").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["-q", "report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file() and f"report: {run_dir / 'report.html'}" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []


def test_a_folder_without_config_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder without config.yaml, so not a fewclip run directory" in capsys.readouterr().err


# --- checked before anything is created ----------------------------------------------------------


def _config_file(folder: Path, tiny_clip: Path, dataset: dict, out: Path) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "methods": ["zero_shot", "linear_probe"],
        "model": {"id": str(tiny_clip)},
        "dataset": dataset,
        "few_shot": {"shots": [1]},
        "splits": {"seeds": [1], "val_per_class": 1},
        "output": {"dir": str(out), "progress": False},
        "cache": {"dir": str(folder / "cache")},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder / "run.yaml"


def test_a_missing_dataset_folder_fails_naming_where_it_looked_before_creating_the_run(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "new"
    config_file = _config_file(tmp_path / "configs", tiny_clip, {"source": "folder", "path": "imgs"}, out)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert (
        f"dataset.path: folder imgs does not exist (looked for {tmp_path / 'configs' / 'imgs'}, then "
        f"{tmp_path / 'imgs'}"
    ) in err
    assert not (tmp_path / "runs").exists()


def test_a_failed_first_command_leaves_no_run_directory_behind(
    tiny_clip: Path, shapes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "deep" / "new"
    # the shapes have 12 train images per class: 16 shots cannot be drawn, which prepare finds after claiming the run
    config_file = _config_file(tmp_path, tiny_clip, {"source": "folder", "path": str(shapes_dir)}, out)
    assert main(["-q", "prepare", str(config_file), "few_shot.shots=[16]"]) == 2
    assert "few_shot.shots: 16 shots" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no marker, no stale lock, no empty folders
    assert main(["-q", "prepare", str(config_file)]) == 0  # a run directory that worked once is kept on failure
    assert main(["-q", "prepare", str(config_file), "few_shot.shots=[16]", "--force"]) == 2
    assert (out / ".fewclip-run.json").is_file() and (out / "data" / "train_full.csv").is_file()


def test_a_cache_dir_that_is_a_file_fails_before_creating_the_run(
    tiny_clip: Path, shapes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "new"
    config_file = _config_file(tmp_path, tiny_clip, {"source": "folder", "path": str(shapes_dir)}, out)
    (tmp_path / "cache-file").write_text("x", encoding="utf-8")
    assert main(["-q", "run", str(config_file), f"cache.dir={tmp_path / 'cache-file'}"]) == 2
    assert f"cache.dir: {tmp_path / 'cache-file'} is a file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_quiet_hides_the_libraries_deprecation_notes_but_not_fewclips(monkeypatch: pytest.MonkeyPatch) -> None:
    from fewclip.runner import cli

    monkeypatch.setattr(sys, "warnoptions", [])  # as when the user gave no -W option
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # restored after the test (set by -q)
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet_libraries()
        for module in ("transformers.utils.generic", "torch.nn.modules.module", "fewclip.runner.config"):
            for category in (FutureWarning, DeprecationWarning):
                warnings.warn_explicit(f"{module} {category.__name__}", category, "file.py", 1, module=module)
        warnings.warn_explicit("a user warning", UserWarning, "file.py", 1, module="torch.utils.data")
    assert [str(w.message) for w in caught] == [
        "fewclip.runner.config FutureWarning",
        "fewclip.runner.config DeprecationWarning",
        "a user warning",
    ]
