"""Saved heads and checkpoints prove they are intact: a checksum in the head's JSON, a tensor digest in a
checkpoint; damaged files are named (heads) or discarded with a warning (checkpoints)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fewclip.heads import FeatureSet, LinearProbeHead, Task, load_head, save_head
from fewclip.heads.artifacts import DamagedArtifact
from fewclip.heads.base import intact_head_meta
from fewclip.training.features_loop import FeatureTrainSettings, train_on_features

CLASSES = ["a", "b", "c"]


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    head = LinearProbeHead(LinearProbeHead.Config(epochs=3))
    x = torch.randn(12, 8)
    head.fit(Task(CLASSES), FeatureSet(x, torch.arange(12) % 3))
    stem = tmp_path / "heads" / "linear_probe" / "shot_4-seed_1"
    save_head(head, stem, CLASSES)
    return stem


def files(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def test_json_records_the_tensor_files_sha256_and_modes_match(saved: Path) -> None:
    tensors, meta = files(saved)
    assert json.loads(meta.read_text())["safetensors_sha256"] == hashlib.sha256(tensors.read_bytes()).hexdigest()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(tensors.stat().st_mode) == stat.S_IMODE(meta.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in saved.parent.iterdir()) == sorted([tensors.name, meta.name])  # no temporaries
    head, _ = load_head(saved)
    assert intact_head_meta(saved) == json.loads(meta.read_text())


def zero_tensors(stem: Path) -> None:
    tensors = files(stem)[0]
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(tensors)).items()}, str(tensors))


def truncate_tensors(stem: Path) -> None:
    tensors = files(stem)[0]
    tensors.write_bytes(tensors.read_bytes()[:40])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (zero_tensors, "its sha256 differs from the one recorded when it was written: truncated or modified"),
        (truncate_tensors, "its sha256 differs from the one recorded when it was written: truncated or modified"),
    ],
)
def test_a_damaged_tensor_file_is_named_with_what_to_do(
    damage, reason: str, saved: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damage(saved)
    with pytest.raises(DamagedArtifact) as err:
        load_head(saved)
    assert str(err.value) == (
        f"{files(saved)[0]}: damaged head file ({reason}); re-run `fewclip train` with the run's config to retrain it"
    )
    assert isinstance(err.value, ValueError)
    with caplog.at_level(logging.WARNING, logger="fewclip.heads.base"):
        assert intact_head_meta(saved) is None
    assert f"{files(saved)[0]}: damaged head file ({reason}); retraining it" in caplog.text


def test_a_truncated_head_json_is_named_not_a_raw_decode_error(saved: Path) -> None:
    meta = files(saved)[1]
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(
        DamagedArtifact,
        match=r"^"
        + str(meta).replace(".", r"\.")
        + r": damaged head file \(not valid JSON: .*\); re-run `fewclip train`",
    ):
        load_head(saved)
    assert intact_head_meta(saved) is None


def test_a_head_saved_before_checksums_loads_if_readable(saved: Path) -> None:
    tensors, meta_file = files(saved)
    meta = json.loads(meta_file.read_text())
    del meta["safetensors_sha256"], meta["meaning_sha256"]  # written by a fewclip that recorded neither
    meta_file.write_text(json.dumps(meta))
    before, _ = load_head(saved)
    x = torch.randn(5, 8)
    reloaded, _ = load_head(saved)
    assert torch.equal(before.logits(x), reloaded.logits(x))
    tensors.write_bytes(b"garbage" * 10)  # without a checksum, still caught when it does not parse
    with pytest.raises(DamagedArtifact, match=r"damaged head file \(not a readable safetensors file: .*\)"):
        load_head(saved)


# --- checkpoints ----------------------------------------------------------------------------------

SETTINGS = FeatureTrainSettings(
    epochs=4, batch_size=4, lr=0.1, momentum=0.9, weight_decay=0.0, warmup_epochs=1, warmup_lr=0.01
)


def train_linear(checkpoint: Path | None) -> tuple[list, int, torch.Tensor, int]:
    """(history, best epoch, final weight, forward calls) of a small module trained by the prompt loop."""
    torch.manual_seed(0)
    module = nn.Linear(8, 3)
    generator = torch.Generator().manual_seed(1)
    data = FeatureSet(torch.randn(12, 8, generator=generator), torch.arange(12) % 3)
    calls = []

    def logits(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return module(x)

    history, best, _ = train_on_features(module, logits, data, None, 3, SETTINGS, seed=1, checkpoint=checkpoint)
    return history, best, module.weight.detach().clone(), len(calls)


def zero_checkpoint(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(path)).items()}, str(path), metadata=metadata)


@pytest.mark.parametrize(
    "damage",
    [lambda p: p.write_bytes(p.read_bytes()[:100]), lambda p: p.write_bytes(b"\0" * 64), zero_checkpoint],
    ids=["truncated", "garbage", "zeroed"],
)
def test_a_damaged_checkpoint_is_discarded_and_training_restarts(
    damage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = train_linear(None)
    checkpoint = tmp_path / "unit.ckpt.safetensors"
    train_linear(checkpoint)
    assert train_linear(checkpoint)[3] == 0  # intact and complete: nothing left to train
    damage(checkpoint)
    with caplog.at_level(logging.WARNING, logger="fewclip.training.features_loop"):
        history, best, weight, calls = train_linear(checkpoint)
    assert f"discarding checkpoint {checkpoint}: " in caplog.text and "training this unit starts over" in caplog.text
    assert calls == fresh[3] == SETTINGS.epochs * 3
    assert history == fresh[0] and best == fresh[1] and torch.equal(weight, fresh[2])
    assert checkpoint.is_file() and not list(tmp_path.glob("*.tmp"))  # rewritten by the restarted run


@pytest.mark.parametrize(
    "edit",
    [
        lambda meta: meta.update(class_names=meta["class_names"][::-1]),  # the logit columns named in another order
        lambda meta: meta["config"].update(epochs=99),
        lambda meta: meta.update(head="zero_shot"),
    ],
)
def test_editing_what_gives_the_tensors_their_meaning_damages_the_head(saved: Path, edit: Any) -> None:
    _, meta_file = files(saved)
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        DamagedArtifact,
        match=r"shot_4-seed_1\.json: damaged head file \(its name, config, class "
        r"names or templates differ from the ones it was saved with: edited",
    ):
        load_head(saved)
    assert intact_head_meta(saved) is None  # so `fewclip train` retrains it
