"""Ctrl-C during a caption command: one line that says how far the stage got and that a re-run resumes,
exit status 130, no traceback; tested on a real process sent SIGINT, as a terminal does."""

from __future__ import annotations

from pathlib import Path


def test_ctrl_c_during_caption_training_says_how_many_units_are_trained(
    world_caption_config, tmp_path: Path, interrupt_cli
) -> None:
    config = world_caption_config("methods=[adapter]", "training.epochs=100000")  # never ends by itself
    path = tmp_path / "caption.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    checkpoint = Path(config.output.dir) / "models" / "adapter" / "seed_0" / "checkpoint.safetensors"
    status, stderr = interrupt_cli(["-q", "caption", "run", str(path)], checkpoint.is_file)  # after its first epoch
    assert status == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.splitlines() == [
        "fewclip: interrupted during train; 0 of 1 units trained, re-run the same command to resume"
    ]  # -q: nothing else
