"""A log written to a file (stderr redirected, as in CI or ``nohup``): one line per finished stage and per finished
unit, with its time and accuracy, and no progress-bar redraws (carriage returns), even when the config asks for
bars: they are drawn on a terminal alone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fewclip.runner.cli import main
from fewclip.runner.pipeline import STAGES

UNITS = ("zero_shot/shot_0-seed_0", "linear_probe/shot_1-seed_1", "linear_probe/shot_2-seed_1")


def test_a_run_logged_to_a_file_has_one_line_per_stage_and_unit_and_no_redraws(
    tiny_clip: Path, shapes_dir: Path, tmp_path: Path
) -> None:
    config = {
        "methods": ["zero_shot", "linear_probe"],
        "model": {"id": str(tiny_clip), "batch_size": 16},
        "dataset": {"source": "folder", "path": str(shapes_dir)},
        "few_shot": {"shots": [1, 2]},
        "splits": {"seeds": [1], "val_per_class": 2},
        "linear_probe": {"epochs": 3},
        "output": {"dir": str(tmp_path / "run"), "progress": True, "figures": False},  # bars asked for
        "cache": {"dir": str(tmp_path / "cache")},
    }
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_file = tmp_path / "run.log"
    with log_file.open("wb") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "fewclip", "run", str(config_file)], stdout=subprocess.PIPE, stderr=stderr
        )
    log = log_file.read_bytes().decode("utf-8")
    assert done.returncode == 0, log
    assert "\r" not in log and "%|" not in log  # no bar, not even its final state
    lines = log.splitlines()
    for stage in STAGES:
        assert len([line for line in lines if re.fullmatch(rf"INFO {stage} done in \d+\.\ds", line)]) == 1, stage
    for unit in UNITS:
        trained = [line for line in lines if line.startswith(f"INFO trained {unit} in ")]
        evaluated = [line for line in lines if line.startswith(f"INFO evaluated {unit} in ")]
        assert len(trained) == 1 and len(evaluated) == 1, (unit, log)
        assert re.fullmatch(r"INFO evaluated \S+ in \d+\.\ds: test accuracy [01]\.\d{3}", evaluated[0])
        if unit.startswith("linear_probe"):  # trained over epochs on validation images: its kept epoch's score
            assert re.fullmatch(r"INFO trained \S+ in \d+\.\ds, val accuracy [01]\.\d{3}", trained[0])
        else:
            assert re.fullmatch(r"INFO trained \S+ in \d+\.\ds", trained[0])
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["output"]["progress"] is False


@pytest.mark.parametrize(
    ("terminal", "quiet", "bars"), [(True, False, True), (False, False, False), (True, True, False)]
)
def test_bars_are_drawn_on_a_terminal_alone_and_never_with_q(
    terminal: bool,
    quiet: bool,
    bars: bool,
    shapes_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    run = tmp_path / "run"
    overrides = ["model.id=fewclip/world-clip", f"output.dir={run}", f"cache.dir={tmp_path / 'cache'}"]
    assert main([*(["-q"] if quiet else []), "prepare", str(shapes_dir), *overrides]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["output"]["progress"] is bars
