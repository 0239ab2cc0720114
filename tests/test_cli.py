"""CLI conveniences: --version, and a stage command given a run directory instead of a config file."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

import fewclip
from fewclip import pipeline
from fewclip.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fewclip {fewclip.__version__}"


def test_report_of_a_run_directory_from_anywhere(make_config: Callable[..., Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
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


def test_quiet_hides_the_libraries_deprecation_notes_but_not_fewclips(monkeypatch: pytest.MonkeyPatch) -> None:
    from fewclip import cli

    monkeypatch.setattr(sys, "warnoptions", [])  # as when the user gave no -W option
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # restored after the test (set by -q)
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet_libraries()
        for module in ("transformers.utils.generic", "torch.nn.modules.module", "fewclip.config"):
            for category in (FutureWarning, DeprecationWarning):
                warnings.warn_explicit(f"{module} {category.__name__}", category, "file.py", 1, module=module)
        warnings.warn_explicit("a user warning", UserWarning, "file.py", 1, module="torch.utils.data")
    assert [str(w.message) for w in caught] == ["fewclip.config FutureWarning", "fewclip.config DeprecationWarning",
                                                "a user warning"]
