"""CoCoOp: image-conditioned prompts, checked against CoOp, a per-image loop through the plain text
tower, and itself under every chunk size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.backbones.prompt_tower import PromptTextTower
from fewclip.heads import CoCoOpHead, FeatureSet, Task, ZeroShotHead, normalize
from fewclip.heads.prompts.cocoop import CoCoOpConfig, CoCoOpParams
from fewclip.heads.prompts.coop import CoOpPrompts
from fewclip.heads.prompts.learning import assemble, init_context

CLASS_NAMES = ["red circle", "green square", "blue triangle"]


class Killed(Exception):
    """Stands in for the process being killed at a chosen point."""


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def random_features(backbone: CLIPBackbone, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, backbone.dim, generator=torch.Generator().manual_seed(seed))


def build(backbone: CLIPBackbone, seed: int = 0) -> tuple[CoCoOpParams, CoOpPrompts]:
    """Context from "a photo of a" and a meta-net initialised as fit does, with CoCoOp's prompts."""
    ctx = init_context(
        PromptTextTower(backbone.model),
        backbone.tokens,
        4,
        "a photo of a",
        len(CLASS_NAMES),
        False,
        torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)
    params = CoCoOpParams(ctx, backbone.dim).requires_grad_(False)
    return params, CoOpPrompts(backbone, CLASS_NAMES, 4, "end", "fp32", "cocoop")


def plain_class_features(prompts: CoOpPrompts, ctx: torch.Tensor) -> torch.Tensor:
    """(n_ctx, w) context -> (C, d): every full prompt through the plain tower (the path that equals
    transformers' get_text_features), no shared-prefix or chunking shortcuts."""
    n_classes = prompts.base.shape[0]
    with torch.no_grad():
        embeds = assemble(prompts.base, ctx.expand(n_classes, -1, -1), prompts.layout.ctx_positions)
        return normalize(prompts.tower(embeds, prompts.layout.eot_positions))


def per_image_reference(
    params: CoCoOpParams, prompts: CoOpPrompts, features: torch.Tensor, scale: float
) -> torch.Tensor:
    """The reference CoCoOp loop: one image at a time, its shifted context, all class prompts."""
    rows = []
    with torch.no_grad():
        for feature in normalize(features):
            shifted = params.ctx + params.meta_net(feature[None])[0]  # (n_ctx, w)
            rows.append(scale * feature @ plain_class_features(prompts, shifted).T)
    return torch.stack(rows)


def conditional_logits(
    backbone: CLIPBackbone,
    params: CoCoOpParams,
    prompts: CoOpPrompts,
    features: torch.Tensor,
    max_prompts_per_call: int = 1024,
) -> torch.Tensor:
    head = CoCoOpHead(CoCoOpConfig(max_prompts_per_call=max_prompts_per_call))
    with torch.no_grad():
        return head._conditional_logits(params, prompts, features, backbone.logit_scale)


def test_zeroed_meta_net_is_coop_with_the_same_context(backbone: CLIPBackbone) -> None:
    params, prompts = build(backbone)
    features = random_features(backbone, 10)
    shifted = conditional_logits(backbone, params, prompts, features)
    with torch.no_grad():
        params.meta_net[2].weight.zero_()
        params.meta_net[2].bias.zero_()
    logits = conditional_logits(backbone, params, prompts, features)
    coop = backbone.logit_scale * normalize(features) @ prompts.features(params.ctx).T
    assert (logits - coop).abs().max().item() <= 1e-5
    # and with the context "a photo of a" that is the single-template zero-shot classifier
    zero_shot = ZeroShotHead().fit(Task(CLASS_NAMES, ["a photo of a {}."], backbone)).logits(features)
    assert (logits - zero_shot).abs().max().item() <= 1e-4
    assert (shifted - logits).abs().max().item() > 1e-3  # the meta-net's shift matters: the test has teeth


def test_batched_equals_each_image_alone(backbone: CLIPBackbone) -> None:
    params, prompts = build(backbone, seed=1)
    features = random_features(backbone, 6, seed=2)
    batched = conditional_logits(backbone, params, prompts, features)
    alone = torch.cat([conditional_logits(backbone, params, prompts, features[i : i + 1]) for i in range(6)])
    reference = per_image_reference(params, prompts, features, backbone.logit_scale)
    assert batched.shape == (6, len(CLASS_NAMES))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)
    # each image has its own prompts: against one shared context the logits differ
    shared = backbone.logit_scale * normalize(features) @ plain_class_features(prompts, params.ctx).T
    assert (reference - shared).abs().max().item() > 1e-3


@pytest.mark.parametrize("max_prompts_per_call", [1, 2, 7])
def test_chunk_size_does_not_change_logits(backbone: CLIPBackbone, max_prompts_per_call: int) -> None:
    params, prompts = build(backbone, seed=3)
    features = random_features(backbone, 5, seed=4)  # 15 prompts: chunks of 1, 2 (ragged), 7 (ragged)
    whole = conditional_logits(backbone, params, prompts, features, max_prompts_per_call=10_000)
    chunked = conditional_logits(backbone, params, prompts, features, max_prompts_per_call=max_prompts_per_call)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        whole, per_image_reference(params, prompts, features, backbone.logit_scale), atol=1e-5, rtol=0
    )


def test_chunked_checkpointed_gradients_equal_unchunked(backbone: CLIPBackbone) -> None:
    """Under autograd each chunk is checkpointed: logits and gradients still match one big call."""
    features = random_features(backbone, 4, seed=5)
    labels = torch.tensor([0, 1, 2, 0])
    results = {}
    for budget in (1, 7, 10_000):
        params, prompts = build(backbone, seed=6)
        params.requires_grad_(True)
        head = CoCoOpHead(CoCoOpConfig(max_prompts_per_call=budget))
        logits = head._conditional_logits(params, prompts, features, backbone.logit_scale)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        results[budget] = (logits.detach(), {k: p.grad.clone() for k, p in params.named_parameters()})
    logits_ref, grads_ref = results[10_000]
    assert set(grads_ref) == {"ctx", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight", "meta_net.2.bias"}
    assert all(g.abs().sum().item() > 0 for g in grads_ref.values())
    for budget in (1, 7):
        logits, grads = results[budget]
        torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=0)
        for name in grads_ref:
            torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-6, rtol=1e-4, msg=name)
    params, prompts = build(backbone, seed=6)
    torch.testing.assert_close(logits_ref, conditional_logits(backbone, params, prompts, features), atol=1e-5, rtol=0)


# --- training -------------------------------------------------------------------------------------


def task_data(backbone: CLIPBackbone, per_class: int, seed: int) -> FeatureSet:
    labels = torch.arange(len(CLASS_NAMES)).repeat(per_class)
    return FeatureSet(random_features(backbone, len(labels), seed=seed), labels)


def test_only_context_and_meta_net_train_and_clip_stays_bit_identical(
    backbone: CLIPBackbone, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[torch.Tensor]] = []
    original = torch.optim.SGD

    class Spy(original):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
            params = list(params)
            seen.append(params)
            super().__init__(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", Spy)
    before = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}
    config = make_config(
        "cocoop.epochs=3", "cocoop.batch_size=3", "cocoop.warmup_epochs=0", "cocoop.select=last", "cocoop.lr=0.05"
    ).cocoop
    head = CoCoOpHead(config).fit(Task(CLASS_NAMES, backbone=backbone, seed=2), task_data(backbone, 3, seed=1))
    assert len(seen) == 1
    initial, _ = build(backbone, seed=2)
    assert [tuple(p.shape) for p in seen[0]] == [tuple(p.shape) for p in initial.parameters()]
    after = backbone.model.state_dict()
    assert after.keys() == before.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())
    trained = dict(head.params_.named_parameters())
    for name, value in initial.named_parameters():  # every trainable tensor moved
        assert (trained[name] - value).abs().max().item() > 1e-6, name


def test_cocoop_resumes_through_task_checkpoint(
    backbone: CLIPBackbone, tmp_path: Path, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("cocoop.epochs=4", "cocoop.batch_size=3").cocoop
    train, val = task_data(backbone, 3, seed=1), task_data(backbone, 2, seed=2)
    per_epoch = 3 + 1  # 9 images in batches of 3, then one val call

    def fit(checkpoint: Path | None) -> CoCoOpHead:
        return CoCoOpHead(config).fit(Task(CLASS_NAMES, backbone=backbone, seed=4, checkpoint=checkpoint), train, val)

    reference = fit(None)
    calls = {"count": 0, "fail_at": 2 * per_epoch + 2}
    original = CoCoOpHead._conditional_logits

    def counting(self: CoCoOpHead, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls["count"] += 1
        if calls["count"] == calls["fail_at"]:
            raise Killed("killed during epoch 3")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CoCoOpHead, "_conditional_logits", counting)
    checkpoint = tmp_path / "cocoop.ckpt.safetensors"
    with pytest.raises(Killed):
        fit(checkpoint)
    calls.update(count=0, fail_at=None)
    resumed = fit(checkpoint)
    assert calls["count"] == 2 * per_epoch + 1  # epochs 3 and 4 only, then the val call that fits the temperature
    assert resumed.history_ == reference.history_ and resumed.best_epoch_ == reference.best_epoch_
    assert len(reference.history_) == 4
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
