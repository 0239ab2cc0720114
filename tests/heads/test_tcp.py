"""TCP: it learns a learnable task and beats zero-shot, transfers to new class names (each class's tokens from its own
text embedding), round-trips through save/load (transfer included), resumes a killed fit, and refuses a layer
outside the text tower before training. (Equivalence with the official code: tests/reference/test_tcp.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import Task, TcpHead, ZeroShotHead, load_head, save_head
from fewclip.heads.prompts.tcp import TcpPrompts
from tests.heads.adapter_tasks import CallCounter, Killed, accuracy
from tests.heads.test_coop import TASK_NAMES, synthetic_task
from tests.heads.test_kgcoop_prograd import TEMPLATES, data, task

SHORT = ["epochs=4", "batch_size=4", "select=last"]
NEW_NAMES = ["purple cross", "orange ring", "white arrow"]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="module")
def trained(backbone: CLIPBackbone) -> TcpHead:
    train, val = data(backbone)
    config = TcpHead.Config(epochs=4, batch_size=4, select="last")
    return TcpHead(config).fit(task(backbone), train, val)


def test_learns_the_coop_task_and_beats_zero_shot(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    train, val = synthetic_task(backbone, 4, seed=1), synthetic_task(backbone, 8, seed=2)
    config = make_config("tcp.epochs=20", "tcp.batch_size=8", "tcp.select=last").tcp  # Adam, lr etc.: the defaults
    head = TcpHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, 0), train, val)
    history = head.history_
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(val.features), val.labels)
    learned = accuracy(head.predict(val.features), val.labels)
    assert learned > zero_shot + 0.1, (learned, zero_shot)


def test_transfer_gives_each_class_its_own_tokens(trained: TcpHead, backbone: CLIPBackbone) -> None:
    """On the training names the transfer is the trained head; on other names each class's features come from its
    own text embedding, so they do not depend on which other classes are listed."""
    features = synthetic_task(backbone, 2, seed=5).features
    same = trained.transfer(backbone, TASK_NAMES)
    torch.testing.assert_close(same.logits(features), trained.logits(features), atol=1e-5, rtol=1e-5)
    new = trained.transfer(backbone, NEW_NAMES)
    alone = trained.transfer(backbone, NEW_NAMES[1:2])
    torch.testing.assert_close(alone.class_text_features_, new.class_text_features_[1:2], atol=1e-5, rtol=1e-5)
    assert new.logits(features).shape == (len(features), len(NEW_NAMES))
    assert trained.class_text_features_.shape[0] == len(TASK_NAMES)  # the trained head is untouched


def test_the_tokens_are_what_the_tke_maps(trained: TcpHead, backbone: CLIPBackbone) -> None:
    """The class text features depend on the TKE's output: zeroing its last layer gives other features."""
    zero_shot = ZeroShotHead().fit(task(backbone)).prototypes_
    prompts = TcpPrompts(backbone, TASK_NAMES, zero_shot, trained.config, trained.layer_)
    with torch.no_grad():
        torch.testing.assert_close(prompts.features(trained.params_), trained.class_text_features_, atol=1e-6, rtol=0)
        params = type(trained.params_)(trained.params_.ctx.clone(), backbone.dim, backbone.dim // 4)
        params.load_state_dict(trained.params_.state_dict())
        params.tke.linear2.weight.zero_()
        params.tke.linear2.bias.zero_()
        assert (prompts.features(params) - trained.class_text_features_).abs().max() > 1e-3


def test_save_and_load_give_the_same_logits_and_transfer(
    trained: TcpHead, backbone: CLIPBackbone, tmp_path: Path
) -> None:
    stem = tmp_path / "tcp" / "shot_2-seed_3"
    save_head(trained, stem, TASK_NAMES, {"templates": TEMPLATES})
    loaded, _ = load_head(stem)
    assert isinstance(loaded, TcpHead)
    features = synthetic_task(backbone, 2, seed=5).features
    assert torch.equal(loaded.logits(features), trained.logits(features))
    assert loaded.layer_ == trained.layer_ and loaded.trainable_parameters() == trained.trainable_parameters()
    assert torch.equal(
        loaded.transfer(backbone, NEW_NAMES).logits(features), trained.transfer(backbone, NEW_NAMES).logits(features)
    )


def test_trainable_parameters_are_the_context_and_the_tke(trained: TcpHead, backbone: CLIPBackbone) -> None:
    d, w = backbone.dim, backbone.model.config.text_config.hidden_size
    assert trained.trainable_parameters() == 4 * w + (d * (d // 4) + d // 4) + (d // 4 * 4 * w + 4 * w)


def test_resumes_a_killed_fit(
    backbone: CLIPBackbone, make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(*(f"tcp.{o}" for o in SHORT)).tcp
    train, val = data(backbone)
    reference = TcpHead(config).fit(task(backbone), train, val)
    per_epoch = 3 + 1  # 12 images in batches of 4, then one val pass
    calls = CallCounter(monkeypatch, TcpPrompts, "features", fail_at=2 * per_epoch + 2)
    checkpoint = tmp_path / "tcp.ckpt.safetensors"
    with pytest.raises(Killed):
        TcpHead(config).fit(task(backbone, checkpoint=checkpoint), train, val)
    calls.restart()
    resumed = TcpHead(config).fit(task(backbone, checkpoint=checkpoint), train, val)
    assert calls.count == 2 * per_epoch + 1  # epochs 3 and 4, then the final class features
    assert resumed.history_ == reference.history_
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_a_layer_outside_the_text_tower_fails_before_training(
    backbone: CLIPBackbone, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr("fewclip.heads.prompts.tcp.train_on_features", refuse)
    train, val = data(backbone)
    head = TcpHead(make_config("tcp.layer=8").tcp)  # the reference's layer; the tiny tower has 2
    with pytest.raises(ValueError, match=r"tcp\.layer 8 is not a middle layer of this model's 2-layer text tower"):
        head.fit(task(backbone), train, val)
    assert TcpHead.needs == {"deep_prompts"}


def test_the_optimiser_is_adam_with_eps_or_sgd_with_momentum() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = TcpHead.Config().make_optimizer(params)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["eps"] == 1e-3 and adam.defaults["betas"] == (0.9, 0.999)
    assert adam.defaults["weight_decay"] == 5e-4 and TcpHead.Config().settings(16).momentum == 0.0
    sgd_config = TcpHead.Config(optimizer="sgd")
    sgd = sgd_config.make_optimizer(params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 == sgd_config.settings(16).momentum
