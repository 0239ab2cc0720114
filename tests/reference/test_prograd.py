"""ProGrad against its official code, BeierZhu/Prompt-align, re-implemented here in plain torch:
``ProGrad.public/trainers/prograd.py`` (``PromptLearner.__init__`` with CTX_INIT, ``CLIP`` the zero-shot
teacher, ``CustomCLIP.forward``, ``ProGradLoss``, ``ProGrad.forward_backward``) and
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` ``prograd_backward_and_update``, on the tiny test CLIP,
with Dassl's loop from ``dassl_clip``.

The dataset template is "a photo of a {}." (ImageNet's, SUN397's, Caltech101's, StanfordCars' in the
reference): its words "a photo of a" fill the last 4 of the 16 context vectors, the first 12 are zeros,
and the teacher encodes it. The class names come in the reverse order of the classes the features were
made from, so zero-shot disagrees with the labels and the two gradients conflict on some steps (the
projection runs). Compared, as in ``test_coop``: the starting context (required equal to the
reference's), the batches (12 images in batches of 5, the partial one dropped), the context after 3
epochs, each epoch's cross-entropy and the logits, with ``test_coop``'s tolerances.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

import fewclip.heads.prompts.coop
from fewclip.backbones import CLIPBackbone
from fewclip.heads import ProGradHead, Task
from tests.heads.test_coop import TASK_NAMES, synthetic_task
from tests.reference.dassl_clip import (
    DasslOptim,
    FitRecorder,
    ReferenceCLIPText,
    class_prompt_tokens,
    dassl_train,
    fewclip_orders,
    loader_batches,
)
from tests.reference.test_coop import LOGITS_TOL, PARAMS_TOL, epoch_means

SEED, EPOCHS, BATCH, LR = 3, 3, 5, 0.05
TEMPLATE = "a photo of a {}."  # CUSTOM_TEMPLATES["ImageNet"] in trainers/prograd.py
N_CTX, LAMBDA, T = 16, 1.0, 1.0  # scripts/prograd.sh: N_CTX 16, LOSS.LAMBDA 1.0; configs: LOSS.T 1.0
NAMES = TASK_NAMES[::-1]  # names that zero-shot maps to the wrong features: CE and KL pull apart


class ReferenceProGrad:
    """ProGrad's prompt learner, teacher, loss and update (fp32), with CTX_INIT True as its configs set it."""

    def __init__(self, clip: ReferenceCLIPText, class_names: list[str], template: str, n_ctx: int) -> None:
        self.clip = clip
        # PromptLearner.__init__: the template's words, zeros before them, "X" placeholders in the prompt
        ctx_init = template.replace(" {}.", "").replace("_", " ")
        prompt_n_ctx = len(ctx_init.split(" "))
        assert n_ctx >= prompt_n_ctx
        embedding = clip.embed(clip.tokenize([ctx_init]))
        ctx_vectors = torch.zeros(n_ctx, embedding.shape[-1])
        ctx_vectors[n_ctx - prompt_n_ctx :, :] = embedding[0, 1 : 1 + prompt_n_ctx, :]
        self.ctx = ctx_vectors.requires_grad_(True)
        prompt_prefix = " ".join(["X"] * (n_ctx - prompt_n_ctx)) + " " + ctx_init
        self.tokenized, self.token_prefix, self.token_suffix = class_prompt_tokens(
            clip, prompt_prefix, class_names, n_ctx
        )
        with torch.no_grad():  # CLIP.__init__ (the zero-shot teacher): the template's text features, normalised
            text_features = clip.encode_text([template.format(c.replace("_", " ")) for c in class_names])
            self.zs_text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        self.conflicts = 0  # steps whose gradients pointed apart (the projection ran)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``CustomCLIP.forward``."""
        n_cls = self.token_prefix.shape[0]
        prompts = torch.cat([self.token_prefix, self.ctx.unsqueeze(0).expand(n_cls, -1, -1), self.token_suffix], 1)
        text_features = self.clip.encode(prompts, self.tokenized)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.clip.logit_scale * image_features @ text_features.t()

    def zs_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``CLIP.forward``: zero-shot logits of the template."""
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.clip.logit_scale * image_features @ self.zs_text_features.t()

    def loss(
        self, output: torch.Tensor, zs_output: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ProGradLoss.forward``: (cross-entropy, KL toward the teacher at temperature T, times T^2)."""
        xe_loss = F.cross_entropy(output, label)
        tea_prob = F.softmax(zs_output / T, dim=-1)
        kl_loss = (-tea_prob * F.log_softmax(output / T, -1) * T * T).sum(1).mean()
        return xe_loss, kl_loss

    def backward_and_update(
        self, optimizer: torch.optim.Optimizer, loss_a: torch.Tensor, loss_b: torch.Tensor, lambda_: float
    ) -> None:
        """``prograd_backward_and_update``: the KL's gradient first, then CE's, projected on conflict."""
        optimizer.zero_grad()
        loss_b.backward(retain_graph=True)
        b_grad = self.ctx.grad.clone()
        optimizer.zero_grad()
        loss_a.backward()
        b_grad_norm = b_grad / torch.linalg.norm(b_grad)
        a_grad = self.ctx.grad.clone()
        a_grad_norm = a_grad / torch.linalg.norm(a_grad)
        if torch.dot(a_grad_norm.flatten(), b_grad_norm.flatten()) < 0:
            self.conflicts += 1
            self.ctx.grad = a_grad - lambda_ * torch.dot(a_grad.flatten(), b_grad_norm.flatten()) * b_grad_norm
        optimizer.step()

    def train(
        self, features: torch.Tensor, labels: torch.Tensor, optim: DasslOptim, orders: list[torch.Tensor]
    ) -> list[float]:
        def forward_backward(optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
            output = self.logits(features[batch])
            with torch.no_grad():
                zs_clip_output = self.zs_logits(features[batch])
            xe_loss, kl_loss = self.loss(output, zs_clip_output.detach(), labels[batch])
            self.backward_and_update(optimizer, xe_loss, kl_loss, LAMBDA)
            return xe_loss.item()

        return dassl_train([self.ctx], optim, orders, forward_backward)


def test_prograd_starts_and_trains_as_the_official_code(
    backbone: CLIPBackbone, clip: ReferenceCLIPText, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [f"epochs={EPOCHS}", f"batch_size={BATCH}", f"lr={LR}", "select=last", "calibrate=false"]
    config = make_config(*(f"prograd.{o}" for o in overrides)).prograd  # the context keys: the defaults
    train = synthetic_task(backbone, 2, seed=1)  # 6 classes x 2 = 12 images
    recorder = FitRecorder(monkeypatch, fewclip.heads.prompts.coop)
    head = ProGradHead(config).fit(Task(NAMES, [TEMPLATE], backbone, SEED), train)

    reference = ReferenceProGrad(clip, NAMES, TEMPLATE, N_CTX)
    torch.testing.assert_close(recorder.initial["ctx"], reference.ctx.detach(), **PARAMS_TOL)  # zeros, then the words
    orders = fewclip_orders(len(train), SEED, EPOCHS)
    for fewclip_batches, order in zip(recorder.batches, orders, strict=True):
        assert [b.tolist() for b in fewclip_batches] == [b.tolist() for b in loader_batches(order, BATCH)]
    initial = reference.ctx.detach().clone()
    losses = reference.train(
        train.features, train.labels, DasslOptim(lr=LR, max_epoch=EPOCHS, batch_size=BATCH), orders
    )

    torch.testing.assert_close(head.ctx_, reference.ctx.detach(), **PARAMS_TOL)
    assert [row["train_loss"] for row in head.history_] == pytest.approx(epoch_means(losses, 2), rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(
            head.uncalibrated_logits(train.features), reference.logits(train.features), **LOGITS_TOL
        )
    # teeth: the projection ran on some steps and not on others, and the context moved far beyond the tolerance
    assert 0 < reference.conflicts < len(losses)
    assert (reference.ctx.detach() - initial).abs().max() > 1e-2


def test_untrained_prograd_scores_as_the_official_initial_prompt(
    backbone: CLIPBackbone, clip: ReferenceCLIPText, make_config: Callable[..., Any]
) -> None:
    """The reference's untrained logits: 12 zero vectors, then "a photo of a", then the class name."""
    config = make_config(
        "prograd.epochs=1",
        "prograd.lr=1e-12",
        "prograd.warmup_epochs=0",
        "prograd.select=last",
        "prograd.calibrate=false",
    ).prograd  # one step at a rate that leaves the context as it was
    train = synthetic_task(backbone, 2, seed=1)
    head = ProGradHead(config).fit(Task(NAMES, [TEMPLATE], backbone, SEED), train)
    reference = ReferenceProGrad(clip, NAMES, TEMPLATE, N_CTX)
    with torch.no_grad():
        torch.testing.assert_close(
            head.uncalibrated_logits(train.features), reference.logits(train.features), **LOGITS_TOL
        )


def test_defaults_follow_the_official_config(make_config: Callable[..., Any]) -> None:
    """``configs/trainers/ProGrad/rn50_ep50.yaml`` / ``rn50_ep100.yaml`` / ``rn50.yaml`` (CTX_INIT True, SGD lr
    0.002, batch 32, LOSS.T 1.0, warm-up 1 epoch at 1e-5), ``scripts/prograd.sh`` (N_CTX 16, LAMBDA 1.0,
    class token at the end), the README's epochs per shot budget, and Dassl's defaults."""
    config = make_config().prograd
    assert (config.n_ctx, config.ctx_init, config.ctx_init_mode) == (N_CTX, "a photo of a", "zeros_then_words")
    assert (config.class_token_position, config.class_specific_context) == ("end", False)
    assert config.epochs == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    assert (config.batch_size, config.lr, config.momentum, config.weight_decay) == (32, 0.002, 0.9, 5e-4)
    assert (config.projection, config.temperature) == (LAMBDA, T)
    assert (config.warmup_epochs, config.warmup_lr, config.schedule, config.drop_last) == (1, 1e-5, "dassl", True)
