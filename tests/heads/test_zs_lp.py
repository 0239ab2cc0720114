"""ZS-LP and CLAP: untrained is zero-shot, the CLAP multipliers and penalty against independent formulas,
validation-free defaults, a task they learn, resume after a kill, parameter counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import ClapHead, Task, ZeroShotHead, ZsLpHead, normalize
from fewclip.heads.on_features.clap import class_multipliers
from fewclip.heads.on_features.zs_lp import PrototypeModel, initial_model
from tests.heads.adapter_tasks import TASK_NAMES, CallCounter, Killed, accuracy, cluster_task

TEMPLATES = ["a photo of a {}.", "an image of a {}."]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone, seed: int = 0, checkpoint: Path | None = None) -> Task:
    return Task(TASK_NAMES, TEMPLATES, backbone, seed, checkpoint=checkpoint)


def test_untrained_zs_lp_is_zero_shot(
    backbone: CLIPBackbone, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewclip.training.selection import Selection

    monkeypatch.setattr(
        "fewclip.heads.on_features.trained_module.train_on_features",
        lambda *a, **k: ([], Selection(0, "untrained"), {}),
    )
    test = cluster_task(backbone.dim, 5, seed=3)
    # one template: the untrained probe is exactly zero-shot
    one = Task(TASK_NAMES, TEMPLATES[:1], backbone, 0)
    head = ZsLpHead(make_config().zs_lp).fit(one, cluster_task(backbone.dim, 2, seed=1))
    assert (head.logits(test.features) - ZeroShotHead().fit(one).logits(test.features)).abs().max().item() <= 1e-5
    # several: the start is the mean raw template embedding (the reference's), scored by CLIP's cosine logits
    head = ZsLpHead(make_config().zs_lp).fit(task(backbone), cluster_task(backbone.dim, 2, seed=1))
    raw = backbone.encode_text([t.format(n) for t in TEMPLATES for n in TASK_NAMES]).reshape(2, len(TASK_NAMES), -1)
    torch.testing.assert_close(head.model_.prototypes, raw.mean(0), atol=1e-5, rtol=1e-5)
    expected = backbone.logit_scale * normalize(test.features) @ normalize(raw.mean(0)).T
    assert (head.logits(test.features) - expected).abs().max().item() <= 1e-5
    # prototypes: zero_shot starts from the zero-shot ensemble, at the raw mean's length: exactly zero-shot
    head = ZsLpHead(make_config("zs_lp.prototypes=zero_shot").zs_lp).fit(
        task(backbone), cluster_task(backbone.dim, 2, seed=1)
    )
    zero_shot = ZeroShotHead().fit(task(backbone)).logits(test.features)
    assert (head.logits(test.features) - zero_shot).abs().max().item() <= 1e-5
    assert (expected - zero_shot).abs().max().item() > 1e-3  # the two starts differ with two templates
    torch.testing.assert_close(head.model_.prototypes.norm(dim=-1), raw.mean(0).norm(dim=-1))


def test_defaults_are_validation_free(make_config: Callable[..., Any]) -> None:
    for block in (make_config().zs_lp, make_config().clap):
        assert (block.select, block.calibrate, block.epochs, block.lr, block.batch_size) == (
            "last",
            False,
            300,
            0.1,
            256,
        )


def test_clap_multipliers_are_the_zero_shot_class_confidence() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    p = torch.softmax(logits, dim=-1)
    expected = torch.tensor([(p[0, 0] + p[1, 0]) / 2, p[2, 1]])
    torch.testing.assert_close(class_multipliers(logits, labels, 2), expected)


def test_clap_penalty_holds_prototypes_nearer_the_start(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train = cluster_task(backbone.dim, 2, seed=1)
    overrides = ("epochs=30", "batch_size=12")
    zs_lp = ZsLpHead(make_config(*(f"zs_lp.{o}" for o in overrides)).zs_lp).fit(task(backbone), train)
    clap = ClapHead(make_config(*(f"clap.{o}" for o in overrides)).clap).fit(task(backbone), train)
    w0 = initial_model(task(backbone)).prototypes.detach()
    drift_lp = (zs_lp.model_.prototypes - w0).norm(dim=-1).sum()
    drift_clap = (clap.model_.prototypes - w0).norm(dim=-1).sum()
    assert 0 < drift_clap < drift_lp
    assert clap.trainable_parameters() == zs_lp.trainable_parameters() == len(TASK_NAMES) * backbone.dim


def test_zs_lp_and_clap_beat_zero_shot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    train, test = cluster_task(backbone.dim, 4, seed=1), cluster_task(backbone.dim, 10, seed=3)
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(test.features), test.labels)
    for head in (ZsLpHead(make_config("zs_lp.epochs=60").zs_lp), ClapHead(make_config("clap.epochs=60").clap)):
        head.fit(task(backbone), train)
        learned = accuracy(head.predict(test.features), test.labels)
        assert learned > zero_shot + 0.3, (head.name, learned, zero_shot)
        assert head.best_epoch_ == 60  # validation-free: the last epoch


def test_clap_resumes_a_killed_fit(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("clap.epochs=4", "clap.batch_size=4").clap
    train, val = cluster_task(backbone.dim, 2, seed=1), cluster_task(backbone.dim, 2, seed=2)
    reference = ClapHead(config).fit(task(backbone, seed=4), train, val)
    per_epoch = 3 + 1  # 12 images in batches of 4, then one val pass
    calls = CallCounter(monkeypatch, PrototypeModel, "forward", fail_at=2 * per_epoch + 2)
    checkpoint = tmp_path / "clap.ckpt.safetensors"
    with pytest.raises(Killed):
        ClapHead(config).fit(task(backbone, seed=4, checkpoint=checkpoint), train, val)
    calls.restart()
    resumed = ClapHead(config).fit(task(backbone, seed=4, checkpoint=checkpoint), train, val)
    # the untrained probe scores the support set once (the multipliers), then epochs 3 and 4 (no calibration
    # pass: validation-free)
    assert calls.count == 1 + 2 * per_epoch
    assert resumed.history_ == reference.history_
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
