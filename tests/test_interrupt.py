"""Ctrl-C during a stage: one line that says how far the stage got and that a re-run resumes, exit status 130,
no traceback; tested on a real process sent SIGINT, as a terminal does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from fewclip.interrupt import Progress, interrupted_line

# features: each image's reading waits, so the stage is still running after its first batch is committed
SLOW_READS = (
    "import time, fewclip.features as features\n"
    "read = features._load_pixels\n"
    "features._load_pixels = lambda job: (time.sleep(0.3), read(job))[1]"
)
LINE = re.compile(r"fewclip: interrupted during (\w+); (\d+) of (\d+) ([a-z ]+), re-run the same command to resume")


def config_file(make_config: Callable[..., Any], tmp_path: Path, *overrides: str) -> tuple[Path, Any]:
    config = make_config(*overrides)
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    return path, config


def the_one_line(stderr: str) -> re.Match[str]:
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    match = LINE.fullmatch(lines[0])
    assert match is not None, stderr
    return match


def test_ctrl_c_during_features_says_how_many_images_are_encoded(
    make_config: Callable[..., Any], tmp_path: Path, interrupt_cli
) -> None:
    path, config = config_file(make_config, tmp_path, "model.batch_size=4")
    cache = Path(config.cache.dir)
    status, stderr = interrupt_cli(
        ["-q", "run", str(path)], lambda: any(cache.glob("features/*/*.keys")), prelude=SLOW_READS
    )
    assert status == 130
    stage, done, total, noun = the_one_line(stderr).groups()
    assert (stage, noun) == ("features", "images encoded")
    assert 4 <= int(done) < int(total)  # at least the first batch of 4 was committed, not all


def test_ctrl_c_during_train_says_how_many_units_are_trained(
    make_config: Callable[..., Any], tmp_path: Path, interrupt_cli
) -> None:
    path, config = config_file(make_config, tmp_path, "linear_probe.epochs=1000000")  # never ends by itself
    zero_shot = Path(config.output.dir) / "heads" / "zero_shot" / "shot_0-seed_0.json"  # the first unit
    status, stderr = interrupt_cli(["-q", "run", str(path)], zero_shot.is_file)
    assert status == 130
    assert the_one_line(stderr).groups() == ("train", "1", "4", "units trained")  # zero-shot + 3 linear probes


def test_the_line_without_progress_and_when_counting_fails() -> None:
    assert interrupted_line(None, None) == "interrupted, re-run the same command to resume"
    assert interrupted_line("evaluate", None) == "interrupted during evaluate, re-run the same command to resume"

    def broken() -> int:
        raise OSError("disk gone")

    assert interrupted_line("features", Progress(9, "images encoded", recount=broken)) == (
        "interrupted during features, re-run the same command to resume"
    )
    assert interrupted_line("train", Progress(4, "units trained", done=2)) == (
        "interrupted during train; 2 of 4 units trained, re-run the same command to resume"
    )


def test_ctrl_c_in_a_command_without_stages_is_one_line_too(monkeypatch, capsys) -> None:
    import signal

    from fewclip.runner import cli

    def interrupted_predict(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_predict", interrupted_predict)
    handler = signal.getsignal(signal.SIGINT)
    try:
        assert cli.main(["predict", "some_run", "photo.png"]) == 130
    finally:
        signal.signal(signal.SIGINT, handler)  # the CLI ignores a second Ctrl-C from then on; pytest must not
    assert capsys.readouterr().err == "fewclip: interrupted\n"
