"""KgCoOp and ProGrad: each reduces to CoOp step for step (weight 0; projection 0 or agreeing gradients),
the guidance pulls class text features to the hand-crafted ones, the projection formula, ProGrad's initial
context and its check, a learnable task, resume after a kill. (Equivalence with the official code:
tests/reference/test_kgcoop.py, test_prograd.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import CoOpHead, FeatureSet, KgCoOpHead, ProGradHead, Task, ZeroShotHead
from fewclip.heads.prompts.coop import CoOpPrompts
from fewclip.heads.prompts.prograd import ProGradConfig, project_conflict
from fewclip.heads.prompts.learning import init_context
from fewclip.runner.config import ConfigError
from tests.heads.adapter_tasks import CallCounter, Killed, accuracy
from tests.heads.test_coop import TASK_NAMES, synthetic_task

TEMPLATES = ["a photo of a {}."]
SHARED = ["n_ctx=4", "ctx_init=a photo of a", "epochs=3", "batch_size=4", "select=last"]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def task(backbone: CLIPBackbone, seed: int = 3, checkpoint: Path | None = None) -> Task:
    return Task(TASK_NAMES, TEMPLATES, backbone, seed, checkpoint=checkpoint)


def data(backbone: CLIPBackbone) -> tuple[FeatureSet, FeatureSet]:
    return synthetic_task(backbone, 2, seed=1), synthetic_task(backbone, 2, seed=2)


def same_run(a: Any, b: Any) -> None:
    assert a.history_ == b.history_
    assert torch.equal(a.ctx_, b.ctx_) and torch.equal(a.class_text_features_, b.class_text_features_)


@pytest.mark.parametrize(
    "head_cls, key, off", [(KgCoOpHead, "kgcoop", "weight=0"), (ProGradHead, "prograd", "projection=0")]
)
def test_switched_off_is_coop_step_for_step(
    head_cls: type, key: str, off: str, backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train, val = data(backbone)
    coop = CoOpHead(make_config(*(f"coop.{o}" for o in SHARED)).coop).fit(task(backbone), train, val)
    other = head_cls(getattr(make_config(*(f"{key}.{o}" for o in SHARED + [off])), key)).fit(task(backbone), train, val)
    same_run(other, coop)
    assert coop.history_[-1]["train_loss"] != coop.history_[0]["train_loss"]  # it did train


def test_prograd_with_agreeing_gradients_is_coop(
    backbone: CLIPBackbone, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make the KL gradient the CE gradient itself (always agreeing): the full-strength projection never fires."""
    train, val = data(backbone)
    coop = CoOpHead(make_config(*(f"coop.{o}" for o in SHARED)).coop).fit(task(backbone), train, val)
    fired = []

    def agreeing(ce_grad: torch.Tensor, kl_grad: torch.Tensor, strength: float) -> torch.Tensor:
        result = project_conflict(ce_grad, ce_grad.clone(), strength)
        fired.append(not torch.equal(result, ce_grad))
        return result

    monkeypatch.setattr("fewclip.heads.prompts.prograd.project_conflict", agreeing)
    prograd = ProGradHead(make_config(*(f"prograd.{o}" for o in SHARED)).prograd).fit(task(backbone), train, val)
    same_run(prograd, coop)
    assert fired and not any(fired)


def test_prograd_projection_per_shot_budget_is_that_budgets_lambda(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    """ProGrad's README: LAMBDA 0.8 at 8 and 16 shots on some datasets, 1.0 below; {1: 1.0, 8: 0.8} trains each
    budget exactly as the plain lambda of that budget."""
    train, val = data(backbone)

    def fit(projection: str, shots: int) -> ProGradHead:
        config = make_config(*(f"prograd.{o}" for o in SHARED), f"prograd.projection={projection}").prograd
        return ProGradHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, 3, shots=shots), train, val)

    per_budget = "{1: 1.0, 8: 0.8}"
    same_run(fit(per_budget, 8), fit("0.8", 8))
    same_run(fit(per_budget, 16), fit("0.8", 16))  # an unlisted budget: the largest listed one below it
    same_run(fit(per_budget, 4), fit("1.0", 4))
    assert not torch.equal(fit("0.8", 8).ctx_, fit("1.0", 8).ctx_)  # the two lambdas train differently here


def test_prograd_projection_refuses_a_negative_lambda(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"prograd\.projection.*>= 0"):
        make_config("prograd.projection={1: 1.0, 8: -0.8}")


def test_projection_removes_the_conflicting_component() -> None:
    ce, kl = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 1.0]])
    projected = project_conflict(ce, kl, 1.0)
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5]]))  # ce - (ce.k)k with k = kl/|kl|
    assert abs(float((projected * kl).sum())) < 1e-7
    assert torch.equal(project_conflict(ce, -kl, 1.0), ce)  # agreeing: unchanged


def test_kgcoop_guidance_keeps_class_text_near_the_hand_crafted(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train, val = data(backbone)
    hand = ZeroShotHead().fit(task(backbone)).prototypes_
    lr = ["lr=0.05", "epochs=6"]
    coop = CoOpHead(make_config(*(f"coop.{o}" for o in SHARED + lr)).coop).fit(task(backbone), train, val)
    kg = KgCoOpHead(make_config(*(f"kgcoop.{o}" for o in SHARED + lr + ["weight=50"])).kgcoop).fit(
        task(backbone), train, val
    )
    distance = lambda head: (head.class_text_features_ - hand).pow(2).sum(-1).mean().item()  # noqa: E731
    assert distance(kg) < distance(coop)
    assert kg.trainable_parameters() == 4 * backbone.model.config.text_config.hidden_size


@pytest.mark.parametrize("head_cls, key", [(KgCoOpHead, "kgcoop"), (ProGradHead, "prograd")])
def test_learns_the_coop_task_and_beats_zero_shot(
    head_cls: type, key: str, backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train, val = synthetic_task(backbone, 4, seed=1), synthetic_task(backbone, 8, seed=2)
    config = getattr(
        make_config(
            f"{key}.n_ctx=4", f"{key}.ctx_init=null", f"{key}.epochs=20", f"{key}.batch_size=8", f"{key}.select=last"
        ),
        key,
    )
    if key == "kgcoop":
        config = config.model_copy(update={"weight": 1.0})
    head = head_cls(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, 0), train, val)
    zero_shot = accuracy(ZeroShotHead().fit(task(backbone)).predict(val.features), val.labels)
    assert accuracy(head.predict(val.features), val.labels) > zero_shot + 0.1


@pytest.mark.parametrize("head_cls, key", [(KgCoOpHead, "kgcoop"), (ProGradHead, "prograd")])
def test_resumes_a_killed_fit(
    head_cls: type,
    key: str,
    backbone: CLIPBackbone,
    make_config: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = getattr(make_config(*(f"{key}.{o}" for o in SHARED + ["epochs=4"])), key)
    train, val = data(backbone)
    reference = head_cls(config).fit(task(backbone), train, val)
    per_epoch = 3 + 1  # 12 images in batches of 4, then one val pass
    calls = CallCounter(monkeypatch, CoOpPrompts, "features", fail_at=2 * per_epoch + 2)
    checkpoint = tmp_path / f"{key}.ckpt.safetensors"
    with pytest.raises(Killed):
        head_cls(config).fit(task(backbone, checkpoint=checkpoint), train, val)
    calls.restart()
    resumed = head_cls(config).fit(task(backbone, checkpoint=checkpoint), train, val)
    assert calls.count == 2 * per_epoch + 1  # epochs 3 and 4, then the final class features
    same_run(resumed, reference)


def test_prograd_context_is_zeros_then_the_words(backbone: CLIPBackbone) -> None:
    tower = backbone.prompt_tower()
    words = init_context(tower, backbone.tokens, 4, "a photo of a", 3, False, torch.Generator())
    ctx = init_context(tower, backbone.tokens, 16, "a photo of a", 3, False, torch.Generator(), "zeros_then_words")
    assert (words.shape[0], ctx.shape) == (4, (16, words.shape[1]))
    assert not ctx[:12].any()
    torch.testing.assert_close(ctx[12:], words, atol=0.0, rtol=0.0)  # both are the same embedding rows, copied
    with pytest.raises(ValueError, match="has 4 tokens, more than the 3 context vectors"):
        init_context(tower, backbone.tokens, 3, "a photo of a", 3, False, torch.Generator(), "zeros_then_words")


def test_prograd_refuses_words_the_tokenizer_splits_before_training(backbone: CLIPBackbone) -> None:
    """The reference counts words and copies that many tokens, spilling the rest of a split word into the
    fixed prompt; fewclip refuses such words instead of training on something else."""
    config = ProGradConfig(ctx_init="a photograph")
    assert config.n_ctx == 16
    with pytest.raises(ValueError, match=r"^prograd.ctx_init 'a photograph': its 2 word\(s\) are \d+ tokens"):
        ProGradHead(config).check(task(backbone))


def test_kgcoop_paper_guidance_keeps_the_unit_key_it_had(make_config: Callable[..., Any]) -> None:
    """The paper's form is what fewclip trained before ``guidance`` existed: those units keep their key; the
    code's form (the default) trains differently, so its units get a new one."""
    names = ["red circle", "green square"]
    paper = make_config("kgcoop.guidance=paper").kgcoop
    assert "guidance" not in paper.key_values(names)
    assert paper.key_values(names) == {k: v for k, v in paper.model_dump(mode="json").items() if k != "guidance"}
    assert make_config().kgcoop.key_values(names)["guidance"] == "code"
