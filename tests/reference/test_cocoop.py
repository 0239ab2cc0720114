"""CoCoOp against its official code, KaiyangZhou/CoOp ``trainers/cocoop.py``, re-implemented here in plain
torch (``PromptLearner.__init__`` / ``PromptLearner.forward`` / ``construct_prompts``, ``CustomCLIP.forward``,
``CoCoOp.forward_backward``) on the tiny test CLIP, with Dassl's loop from ``dassl_clip``.

Both start from the same state (ctx_init's words computed here; the meta-net fewclip initialised, whose draw
is fewclip's own) and see the same batches (fewclip's permutation cut by Dassl's loader: 12 images in
batches of 5, the partial batch of 2 dropped). Compared: the context and the meta-net after 3 epochs (one
warm-up epoch, then the cosine, stepped per epoch), each epoch's loss, and the logits, with the
tolerances of ``test_coop`` (float rounding only: fewclip runs every image's prompts in one batched,
shared-prefix call, the reference one image at a time at the full context length).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

import fewclip.heads.prompts.cocoop
from fewclip.backbones import CLIPBackbone
from fewclip.heads import CoCoOpHead, Task
from tests.heads.test_coop import TASK_NAMES, synthetic_task
from tests.reference.dassl_clip import (
    DasslOptim,
    FitRecorder,
    ReferenceCLIPText,
    class_prompt_tokens,
    dassl_train,
    fewclip_orders,
    loader_batches,
    words_context,
)
from tests.reference.test_coop import LOGITS_TOL, PARAMS_TOL, epoch_means

SEED, EPOCHS, BATCH, LR = 3, 3, 5, 0.05


class ReferenceCoCoOp:
    """``PromptLearner`` (context + meta-net) and ``CustomCLIP`` of KaiyangZhou/CoOp ``trainers/cocoop.py``
    (fp32), with ctx_init set as every CoCoOp config sets it."""

    def __init__(
        self, clip: ReferenceCLIPText, class_names: list[str], ctx_init: str, meta_net: dict[str, torch.Tensor]
    ) -> None:
        ctx_init = ctx_init.replace("_", " ")
        n_ctx = len(ctx_init.split(" "))
        self.clip = clip
        self.ctx = words_context(clip, ctx_init, n_ctx).requires_grad_(True)
        # meta_net: linear1 (vis_dim -> vis_dim // 16), ReLU, linear2 (-> ctx_dim); the state fewclip drew
        self.linear1_weight, self.linear1_bias, self.linear2_weight, self.linear2_bias = (
            meta_net[k].clone().requires_grad_(True) for k in ("0.weight", "0.bias", "2.weight", "2.bias")
        )
        self.tokenized, self.token_prefix, self.token_suffix = class_prompt_tokens(clip, ctx_init, class_names, n_ctx)

    def parameters(self) -> list[torch.Tensor]:
        return [self.ctx, self.linear1_weight, self.linear1_bias, self.linear2_weight, self.linear2_bias]

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``CustomCLIP.forward``: each image's context shifted by the meta-net, all class prompts encoded."""
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        hidden = torch.relu(image_features @ self.linear1_weight.T + self.linear1_bias)
        bias = (hidden @ self.linear2_weight.T + self.linear2_bias).unsqueeze(1)  # (batch, 1, ctx_dim)
        ctx_shifted = self.ctx.unsqueeze(0) + bias  # (batch, n_ctx, ctx_dim)
        n_cls = self.token_prefix.shape[0]
        rows = []
        for ctx_i, image_i in zip(ctx_shifted, image_features):
            prompts = torch.cat([self.token_prefix, ctx_i.unsqueeze(0).expand(n_cls, -1, -1), self.token_suffix], 1)
            text = self.clip.encode(prompts, self.tokenized)
            text = text / text.norm(dim=-1, keepdim=True)
            rows.append(self.clip.logit_scale * image_i @ text.t())
        return torch.stack(rows)

    def train(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        optim: DasslOptim,
        orders: list[torch.Tensor],
        drop_last: bool = True,
    ) -> list[float]:
        def forward_backward(optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
            loss = F.cross_entropy(self.logits(features[batch]), labels[batch])  # CustomCLIP.forward in training
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()

        return dassl_train(self.parameters(), optim, orders, forward_backward, drop_last)


def test_cocoop_trains_as_the_official_code(
    backbone: CLIPBackbone, clip: ReferenceCLIPText, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [f"epochs={EPOCHS}", f"batch_size={BATCH}", f"lr={LR}", "select=last", "calibrate=false"]
    config = make_config(*(f"cocoop.{o}" for o in overrides)).cocoop
    train = synthetic_task(backbone, 2, seed=1)  # 6 classes x 2 = 12 images
    recorder = FitRecorder(monkeypatch, fewclip.heads.prompts.cocoop)
    head = CoCoOpHead(config).fit(Task(TASK_NAMES, ["a photo of a {}."], backbone, SEED), train)

    meta_net = {k[len("meta_net.") :]: v for k, v in recorder.initial.items() if k.startswith("meta_net.")}
    reference = ReferenceCoCoOp(clip, TASK_NAMES, config.ctx_init, meta_net)
    torch.testing.assert_close(recorder.initial["ctx"], reference.ctx.detach())  # "a photo of a", as computed here
    orders = fewclip_orders(len(train), SEED, EPOCHS)
    for fewclip_batches, order in zip(recorder.batches, orders, strict=True):
        assert [b.tolist() for b in fewclip_batches] == [b.tolist() for b in loader_batches(order, BATCH)]
    initial = [p.detach().clone() for p in reference.parameters()]
    optim = DasslOptim(lr=LR, max_epoch=EPOCHS, batch_size=BATCH)
    losses = reference.train(train.features, train.labels, optim, orders)

    trained = head.params_.state_dict()
    for name, value in zip(
        ["ctx", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight", "meta_net.2.bias"], reference.parameters()
    ):
        torch.testing.assert_close(trained[name], value.detach(), **PARAMS_TOL, msg=name)
    assert [row["train_loss"] for row in head.history_] == pytest.approx(epoch_means(losses, 2), rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(
            head.uncalibrated_logits(train.features), reference.logits(train.features), **LOGITS_TOL
        )
    # teeth: the state moved far beyond the tolerance, and keeping the partial batch ends elsewhere
    assert max((p.detach() - p0).abs().max().item() for p, p0 in zip(reference.parameters(), initial)) > 1e-2
    kept_partial = ReferenceCoCoOp(clip, TASK_NAMES, config.ctx_init, meta_net)
    kept_partial.train(train.features, train.labels, optim, orders, drop_last=False)
    assert (kept_partial.ctx.detach() - reference.ctx.detach()).abs().max() > 1e-3


def test_defaults_follow_the_official_config(make_config: Callable[..., Any]) -> None:
    """``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`` and Dassl's defaults, but the batch
    (fewclip's 8: the reference's 1 is one step per image; ``cocoop.batch_size: 1`` follows it)."""
    config = make_config().cocoop
    assert (config.n_ctx, config.ctx_init, config.epochs) == (4, "a photo of a", 10)
    assert (config.lr, config.momentum, config.weight_decay) == (0.002, 0.9, 5e-4)
    assert (config.warmup_epochs, config.warmup_lr, config.schedule, config.drop_last) == (1, 1e-5, "dassl", True)
