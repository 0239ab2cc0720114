"""KgCoOp against its official code, htyao89/KgCoOp ``KgCoOp/trainers/kgcoop.py``, re-implemented here in
plain torch (``PromptLearner.__init__`` with CTX_INIT, ``CustomCLIP.forward``, ``KgCoOp.forward_backward``)
on the tiny test CLIP, with Dassl's loop from ``dassl_clip`` (``Dassl.ProGrad.pytorch``'s is the same; the
trainer steps the schedule itself after an epoch's last batch).

The loss is the code's: ``CE + W * (1 - mean_c cos(w_c, w_c^clip))`` with the hand-crafted w_c^clip encoded
from one template, W = 8 as its scripts pass ``TRAINER.COOP.W``. The template here ("a photo of the {}.")
differs from the initial context's words, so the guidance pulls from the first step. Compared, as in
``test_coop``: the starting context, the batches (12 images in batches of 5, the partial one dropped),
the context after 3 epochs, each epoch's loss and the logits, with ``test_coop``'s tolerances.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

import fewclip.heads.prompts.coop
from fewclip.backbones import CLIPBackbone
from fewclip.heads import KgCoOpHead, Task
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
TEMPLATE = "a photo of the {}."  # the dataset's CUSTOM_TEMPLATES entry (fewclip: prompts.templates)
W = 8.0  # scripts/run.sh -> base2new_train.sh, scripts/xd_train.sh: TRAINER.COOP.W 8.0


class ReferenceKgCoOp:
    """``PromptLearner`` + ``CustomCLIP`` + ``KgCoOp.forward_backward`` of htyao89/KgCoOp ``trainers/kgcoop.py``
    (fp32). With CTX_INIT set the words are always "a photo of a" (``temp``), whatever CTX_INIT says."""

    def __init__(self, clip: ReferenceCLIPText, class_names: list[str], template: str, w: float) -> None:
        ctx_init = "a photo of a"
        n_ctx = len(ctx_init.split(" "))
        self.clip, self.w = clip, w
        self.ctx = words_context(clip, ctx_init, n_ctx).requires_grad_(True)
        self.tokenized, self.token_prefix, self.token_suffix = class_prompt_tokens(clip, ctx_init, class_names, n_ctx)
        with torch.no_grad():  # PromptLearner.__init__: text_features of the dataset's template, normalised
            text_features = clip.encode_text([template.format(c.replace("_", " ")) for c in class_names])
            self.text_features = text_features / text_features.norm(dim=-1, keepdim=True)

    def forward(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``CustomCLIP.forward``: (logits, score) with score = 1 - mean cos(learned, hand-crafted)."""
        n_cls = self.token_prefix.shape[0]
        prompts = torch.cat([self.token_prefix, self.ctx.unsqueeze(0).expand(n_cls, -1, -1), self.token_suffix], 1)
        text_features = self.clip.encode(prompts, self.tokenized)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = self.clip.logit_scale * image_features @ text_features.t()
        text_features_old = self.text_features / self.text_features.norm(dim=-1, keepdim=True)
        score = 1.0 - torch.mean(F.cosine_similarity(text_features, text_features_old, dim=1, eps=1e-07))
        return logits, score

    def train(
        self, features: torch.Tensor, labels: torch.Tensor, optim: DasslOptim, orders: list[torch.Tensor]
    ) -> list[float]:
        def forward_backward(optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
            output, score = self.forward(features[batch])
            loss = F.cross_entropy(output, labels[batch]) + self.w * score
            optimizer.zero_grad()  # model_backward_and_update
            loss.backward()
            optimizer.step()
            return loss.item()

        return dassl_train([self.ctx], optim, orders, forward_backward)


def fit_and_reference(
    backbone: CLIPBackbone,
    clip: ReferenceCLIPText,
    make_config: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    *extra: str,
) -> tuple[Any, ReferenceKgCoOp, list[float], Any]:
    """fewclip's KgCoOp (default config but the short schedule) and the reference trained on the same data."""
    overrides = [f"epochs={EPOCHS}", f"batch_size={BATCH}", f"lr={LR}", "select=last", "calibrate=false", *extra]
    config = make_config(*(f"kgcoop.{o}" for o in overrides)).kgcoop
    train = synthetic_task(backbone, 2, seed=1)  # 6 classes x 2 = 12 images
    recorder = FitRecorder(monkeypatch, fewclip.heads.prompts.coop)
    head = KgCoOpHead(config).fit(Task(TASK_NAMES, [TEMPLATE], backbone, SEED), train)

    reference = ReferenceKgCoOp(clip, TASK_NAMES, TEMPLATE, W)
    torch.testing.assert_close(recorder.initial["ctx"], reference.ctx.detach())
    orders = fewclip_orders(len(train), SEED, EPOCHS)
    for fewclip_batches, order in zip(recorder.batches, orders, strict=True):
        assert [b.tolist() for b in fewclip_batches] == [b.tolist() for b in loader_batches(order, BATCH)]
    losses = reference.train(
        train.features, train.labels, DasslOptim(lr=LR, max_epoch=EPOCHS, batch_size=BATCH), orders
    )
    return head, reference, losses, train


def test_kgcoop_trains_with_the_official_loss(
    backbone: CLIPBackbone, clip: ReferenceCLIPText, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    head, reference, losses, train = fit_and_reference(backbone, clip, make_config, monkeypatch)
    assert [row["train_loss"] for row in head.history_] == pytest.approx(epoch_means(losses, 2), rel=1e-5)
    torch.testing.assert_close(head.ctx_, reference.ctx.detach(), **PARAMS_TOL)
    with torch.no_grad():
        logits, score = reference.forward(train.features)
        torch.testing.assert_close(head.uncalibrated_logits(train.features), logits, **LOGITS_TOL)
    # teeth: the guidance term weighs in the loss (the paper's form, twice it, would differ by ~W * score)
    assert W * score.item() > 1e-2


def test_paper_guidance_at_half_the_weight_is_the_code(
    backbone: CLIPBackbone, clip: ReferenceCLIPText, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``guidance: paper`` (Eq. 5: ||w - w^clip||^2 = 2 (1 - cos) for unit vectors) with weight W / 2 is the
    code's loss with W: the same losses and the same context after training."""
    head, reference, losses, _ = fit_and_reference(
        backbone, clip, make_config, monkeypatch, "guidance=paper", f"weight={W / 2}"
    )
    torch.testing.assert_close(head.ctx_, reference.ctx.detach(), **PARAMS_TOL)
    assert [row["train_loss"] for row in head.history_] == pytest.approx(epoch_means(losses, 2), rel=1e-5)


def test_defaults_follow_the_official_config(make_config: Callable[..., Any]) -> None:
    """``configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml``, ``scripts/base2new_train.sh`` (N_CTX 4, CTX_INIT,
    class token at the end, W 8.0 from ``run.sh``) and Dassl's defaults."""
    config = make_config().kgcoop
    assert (config.guidance, config.weight) == ("code", W)
    assert (config.n_ctx, config.ctx_init, config.class_token_position, config.class_specific_context) == (
        4,
        "a photo of a",
        "end",
        False,
    )
    assert (config.epochs, config.batch_size, config.lr, config.momentum, config.weight_decay) == (
        100,
        128,
        0.002,
        0.9,
        5e-4,
    )
    assert (config.warmup_epochs, config.warmup_lr, config.schedule, config.drop_last) == (1, 1e-5, "dassl", True)
