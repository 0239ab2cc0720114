"""Every head learns the world's shifted domain: on the default run's sketches (where the photo-pretrained
world CLIP's zero-shot is ~0.30 on the base classes), each trained head at 16 shots beats zero-shot on the
base classes by a clear margin (bench/world_findings.py: the smallest gain over 3 seeds is KgCoOp's, +10.5
points), except TaskRes, whose official recipe takes one Adam step an epoch on this small support set (a smaller
gain, recorded as found). One seed, figures off, so it takes about a minute."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewclip.runner.cli import main
from fewclip.fileio import read_csv
from fewclip.heads import HEADS, list_heads


@pytest.mark.slow
def test_every_trained_head_beats_zero_shot_on_sketch_base_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEWCLIP_CACHE", str(tmp_path / "cache"))
    assert (
        main(
            [
                "-q",
                "run",
                "default",
                f"methods=[{','.join(m for m in list_heads() if not HEADS.get(m).tunes_encoders)}]",
                "few_shot.shots=[16]",
                "splits.seeds=[1]",
                "output.figures=false",
                "output.saliency_images=0",
                f"output.dir={tmp_path / 'run'}",
            ]
        )
        == 0
    )
    rows = read_csv(tmp_path / "run" / "results" / "summary.csv")
    base = {r["method"]: float(r["accuracy"]) for r in rows if r["split"] == "base"}
    assert 0.2 < base["zero_shot"] < 0.45  # the shift: zero-shot is poor here (0.90 on photos)
    trained = [m for m in list_heads() if HEADS.get(m).uses_shots and not HEADS.get(m).tunes_encoders]
    assert len(trained) == 15 and set(trained) <= set(base)
    gains = {m: round(base[m] - base["zero_shot"], 3) for m in trained}
    assert all(gain > 0.05 for m, gain in gains.items() if m != "taskres"), gains
    # A finding, not a margin: TaskRes at its official recipe (Adam, lr 2e-3, batch 256, 200 epochs at 16 shots)
    # takes one Adam step an epoch here, since the world's 128 base training images (8 classes x 16 shots) are
    # under one batch of 256; its 200 small steps move the residual little: measured +0.04 at seed 1, a gain, but
    # below GDA's (training-free, on the same support set).
    assert 0.02 < gains["taskres"] < gains["gda"], gains
