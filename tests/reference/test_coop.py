"""CoOp against its official code, KaiyangZhou/CoOp ``trainers/coop.py``, re-implemented here in plain torch
(``PromptLearner.__init__`` / ``PromptLearner.forward``, ``CustomCLIP.forward``, ``CoOp.forward_backward``)
on the tiny test CLIP, with Dassl's loop from ``dassl_clip``.

Both start from the same context (the one fewclip drew, or ctx_init's words computed here) and see the
same batches (the permutation fewclip draws, cut by Dassl's loader with drop_last; 12 images in batches of
5 leave a partial batch of 2 that Dassl drops). Compared: the batches, the context after 3 epochs (one
warm-up epoch, then the cosine, stepped per epoch), each epoch's loss, and the logits. Tolerances: fewclip's
tower cuts the prompts to the longest one and runs the shared [SOS][context] part once, the reference pads
to the full context length and runs every prompt whole; these differ in float rounding only (BLAS kernels
differ by shape): logits within 1e-5 + 1e-5 relative, the context within 1e-5 after 6 SGD steps that move
it by ~0.5 (keeping the partial batch would move it ~0.3 elsewhere).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

import fewclip.heads.prompts.coop
from fewclip.backbones import CLIPBackbone
from fewclip.heads import CoOpHead, Task
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

SEED, EPOCHS, BATCH, LR = 3, 3, 5, 0.05  # a large rate: the context moves by ~0.5, so any wrong step shows
LOGITS_TOL = dict(atol=1e-5, rtol=1e-5)  # logits ~10: the logit scale times fp32 rounding of the cosines
PARAMS_TOL = dict(atol=1e-5, rtol=0.0)  # observed <= 1e-6 after 6 steps that move the context by ~0.5


class ReferenceCoOp:
    """``PromptLearner`` + ``CustomCLIP`` of KaiyangZhou/CoOp ``trainers/coop.py`` (fp32)."""

    def __init__(
        self,
        clip: ReferenceCLIPText,
        class_names: list[str],
        n_ctx: int,
        ctx_init: str | None,
        position: str,
        ctx: torch.Tensor | None = None,
    ) -> None:
        if ctx_init:  # PromptLearner.__init__: the words' vectors, their count overriding N_CTX
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))
            ctx = words_context(clip, ctx_init, n_ctx) if ctx is None else ctx
            prompt_prefix = ctx_init
        else:
            prompt_prefix = " ".join(["X"] * n_ctx)
        assert ctx is not None, "random initialisation: give the context fewclip drew"
        self.clip, self.n_ctx, self.position = clip, n_ctx, position
        self.ctx = ctx.clone().requires_grad_(True)
        self.tokenized, self.token_prefix, self.token_suffix = class_prompt_tokens(
            clip, prompt_prefix, class_names, n_ctx
        )
        self.name_lens = [
            len(clip.tokenizer(name.replace("_", " "), add_special_tokens=False)["input_ids"]) for name in class_names
        ]

    def prompts(self) -> torch.Tensor:
        """``PromptLearner.forward``: (C, L, w) prompt embeddings for the class token's position."""
        n_cls = self.token_prefix.shape[0]
        ctx = self.ctx.unsqueeze(0).expand(n_cls, -1, -1) if self.ctx.dim() == 2 else self.ctx
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i : i + 1, :name_len], suffix[i : i + 1, name_len:]
            if self.position == "middle":
                rows.append(torch.cat([prefix[i : i + 1], ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], rest], 1))
            else:  # front
                rows.append(torch.cat([prefix[i : i + 1], name, ctx[i : i + 1], rest], 1))
        return torch.cat(rows)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``CustomCLIP.forward`` on image features: logit_scale * cos(image, class text)."""
        text = self.clip.encode(self.prompts(), self.tokenized)
        image = image_features / image_features.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.clip.logit_scale * image @ text.t()

    def train(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        optim: DasslOptim,
        orders: list[torch.Tensor],
        drop_last: bool = True,
    ) -> list[float]:
        def forward_backward(optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
            loss = F.cross_entropy(self.logits(features[batch]), labels[batch])  # CoOp.forward_backward
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()

        return dassl_train([self.ctx], optim, orders, forward_backward, drop_last)


def epoch_means(losses: list[float], per_epoch: int) -> list[float]:
    return [sum(losses[i : i + per_epoch]) / per_epoch for i in range(0, len(losses), per_epoch)]


CASES = {  # (class token position, class-specific context, ctx_init)
    "end": ("end", False, None),
    "middle": ("middle", False, None),
    "front": ("front", False, None),
    "end-csc": ("end", True, None),
    "end-ctx_init": ("end", False, "a photo of a"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_coop_trains_as_the_official_code(
    case: str,
    backbone: CLIPBackbone,
    clip: ReferenceCLIPText,
    make_config: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    position, csc, ctx_init = CASES[case]
    overrides = [
        f"epochs={EPOCHS}",
        f"batch_size={BATCH}",
        f"lr={LR}",
        "select=last",
        "calibrate=false",
        f"class_token_position={position}",
        f"class_specific_context={str(csc).lower()}",
        f"ctx_init={ctx_init or 'null'}",
    ]
    config = make_config(*(f"coop.{o}" for o in overrides)).coop
    train = synthetic_task(backbone, 2, seed=1)  # 6 classes x 2 = 12 images
    recorder = FitRecorder(monkeypatch, fewclip.heads.prompts.coop)
    head = CoOpHead(config).fit(Task(TASK_NAMES, ["a photo of a {}."], backbone, SEED), train)

    reference = ReferenceCoOp(
        clip, TASK_NAMES, config.n_ctx, ctx_init, position, None if ctx_init else recorder.initial["ctx"]
    )
    torch.testing.assert_close(recorder.initial["ctx"], reference.ctx.detach())  # same start (ctx_init: computed here)
    optim = DasslOptim(lr=LR, max_epoch=EPOCHS, batch_size=BATCH)
    orders = fewclip_orders(len(train), SEED, EPOCHS)
    for fewclip_batches, order in zip(recorder.batches, orders, strict=True):
        assert [b.tolist() for b in fewclip_batches] == [b.tolist() for b in loader_batches(order, BATCH)]
    initial = reference.ctx.detach().clone()
    losses = reference.train(train.features, train.labels, optim, orders)

    torch.testing.assert_close(head.ctx_, reference.ctx.detach(), **PARAMS_TOL)
    assert [row["train_loss"] for row in head.history_] == pytest.approx(epoch_means(losses, 2), rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(
            head.uncalibrated_logits(train.features), reference.logits(train.features), **LOGITS_TOL
        )
    # the comparison has teeth: training moved the context far beyond the tolerance, and keeping the
    # partial batch (Dassl drops it) would have ended elsewhere
    assert (reference.ctx.detach() - initial).abs().max() > 1e-2
    kept_partial = ReferenceCoOp(clip, TASK_NAMES, config.n_ctx, ctx_init, position, initial)
    kept_partial.train(train.features, train.labels, optim, orders, drop_last=False)
    assert (kept_partial.ctx.detach() - reference.ctx.detach()).abs().max() > 1e-3


def test_defaults_follow_the_official_config(make_config: Callable[..., Any]) -> None:
    """``configs/trainers/CoOp/*.yaml`` with ``scripts/coop/main.sh`` (M=16, end) and Dassl's defaults."""
    config = make_config().coop
    assert (config.n_ctx, config.ctx_init, config.class_token_position, config.class_specific_context) == (
        16,
        None,
        "end",
        False,
    )
    assert (config.batch_size, config.lr, config.momentum, config.weight_decay) == (32, 0.002, 0.9, 5e-4)
    assert (config.warmup_epochs, config.warmup_lr, config.schedule, config.drop_last) == (1, 1e-5, "dassl", True)
