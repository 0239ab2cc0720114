"""``fewclip caption run`` with no config: the embedded offline default (world CLIP + world decoder on a world
caption set, adapter / prefix / LoRA). The learnable world task: every trained method's test CIDEr is far
above the untrained decoder's, which says one plausible caption whatever the image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fewclip.backbones.model_source import WORLD_ALIAS, WORLD_DECODER_ALIAS
from fewclip.runner.captioning import DEFAULT_OUTPUT
from fewclip.runner.cli import main
from fewclip.fileio import read_csv


@pytest.mark.slow
def test_the_embedded_default_learns_to_caption_the_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default output.dir is relative to the working directory
    monkeypatch.setenv("FEWCLIP_CACHE", str(tmp_path / "cache"))
    assert main(["-q", "caption", "run"]) == 0
    run_dir = tmp_path / DEFAULT_OUTPUT
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (resolved["model"]["encoder"], resolved["model"]["decoder"]) == (WORLD_ALIAS, WORLD_DECODER_ALIAS)
    assert list((tmp_path / "cache").iterdir())  # encoder tokens went to $FEWCLIP_CACHE

    test = {r["method"]: r for r in read_csv(run_dir / "results" / "caption_summary.csv") if r["split"] == "test"}
    assert sorted(test) == ["adapter", "lora", "prefix", "untrained"]
    untrained = float(test["untrained"]["cider"])
    untrained_captions = {
        r["caption"] for r in read_csv(run_dir / "results" / "predictions" / "untrained" / "seed_0-test.csv")
    }
    assert len(untrained_captions) <= 3  # the frozen decoder's language, blind to the image
    for method in ("adapter", "prefix", "lora"):
        cider = float(test[method]["cider"])
        assert cider > 2.5 * untrained and cider > untrained + 0.8, (method, cider, untrained)
        assert float(test[method]["clipscore"]) > float(test["untrained"]["clipscore"])
        assert int(test[method]["trainable_params"]) > 0 and int(test[method]["n_eval"]) == 96
    out = capsys.readouterr().out
    plain = json.loads((run_dir / "results" / "caption_answer.json").read_text())["plain"]
    assert 2 <= len(plain) <= 3 and out.splitlines()[-1 - len(plain) : -1] == plain  # the answer, then the report
    assert (
        "untrained seed 0: test CIDEr" in out
        and f"results: {Path(DEFAULT_OUTPUT) / 'results' / 'caption_summary.csv'}" in out
    )


def test_a_quiet_caption_run_prints_nothing_on_stderr(tmp_path: Path) -> None:
    """`fewclip -q` shows only warnings that concern the user: a clean run, made small, prints none (no
    library deprecation notes such as GPT-2's `past_key_values`, no progress bars)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fewclip",
            "-q",
            "caption",
            "run",
            "default",
            "methods=[adapter]",
            "data.world_images=40",
            "training.epochs=1",
            f"output.dir={tmp_path / 'run'}",
            f"cache.dir={tmp_path / 'cache'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "adapter seed 0: test CIDEr" in done.stdout
