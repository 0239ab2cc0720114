"""maple against the official MaPLe code (muzairkhattak/multimodal-prompt-learning, trained through
KaiyangZhou/Dassl.pytorch), re-implemented here from reading it:

- ``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``: N_CTX 2, CTX_INIT "a photo of a", PROMPT_DEPTH 9,
  SGD lr 0.0035, 5 epochs, batch 4, cosine with one constant warm-up epoch at 1e-5.
- ``trainers/maple.py`` ``MultiModalPromptLearner.__init__``: with CTX_INIT and N_CTX <= 4, ``ctx`` is the
  embedding of the tokenised init words at positions 1..n_ctx; the class prompts are ``ctx_init + " " + name +
  "."`` tokenised whole, ``token_prefix`` their SOS embedding, ``token_suffix`` everything after position
  n_ctx; ``compound_prompts_text``: depth - 1 tensors (n_ctx, width) drawn from N(0, 0.02);
  ``proj`` and ``compound_prompt_projections`` (``_get_clones`` of one Linear: they start equal) map text width
  to vision width. ``forward``: prompts = [prefix, ctx, suffix], ``proj(ctx)``, the deep text prompts and their
  projections. ``CustomCLIP.forward``: ``logit_scale.exp() * image @ text.T`` of the normalised features,
  ``cross_entropy`` in training. ``TextEncoder.forward``: ``prompts + positional_embedding``, the
  transformer, ``ln_final``, the EOT row, ``@ text_projection``.
- ``clip/model.py`` ``ResidualAttentionBlock_MaPLe.forward``: every layer but the first, while the counter
  has prompts left, replaces the text tokens 1..n_ctx (text) or the last n_ctx tokens (vision) by the next deep
  prompt; ``VisionTransformer_MaPLe.forward``: ``proj(ctx)`` appended after the positional embedding, before
  ``ln_pre``.
- Dassl ``dassl/data/data_manager.py`` ``build_data_loader``: ``drop_last=is_train and len(data_source) >=
  batch_size``; ``dassl/optim/optimizer.py`` ``build_optimizer``: SGD with ``dassl/config/defaults.py``'s
  momentum 0.9, weight decay 5e-4, dampening 0, no Nesterov; ``dassl/optim/lr_scheduler.py``
  ``build_lr_scheduler``: ``CosineAnnealingLR(optimizer, float(max_epoch))`` inside a
  ``ConstantWarmupScheduler`` (WARMUP_RECOUNT true); ``trainers/maple.py`` ``MaPLe.forward_backward`` steps the
  optimiser every batch and the scheduler after an epoch's last batch (``update_lr``).

The same inputs and initial state go to both: the prompts tokenised by the tiny CLIP's tokenizer, the images with
the model's own preprocessing (augmentation off: Dassl's crops draw from another RNG), the batch order fewclip
draws (``epoch_order``; Dassl's ``RandomSampler`` draws from torch's RNG) and fewclip's random initial deep
prompts and projections. Precision is fp32 on both sides (the reference trains in fp16, PREC "fp16").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from torch.nn import functional as F

from fewclip.heads import ImageSet, Task
from fewclip.training.image_batches import epoch_order
from fewclip.heads.encoders.maple import MapleConfig, MapleHead, MapleNet

from tests.heads.image_tasks import pixels_of
from tests.reference.plain_clip import Hook, PlainClip, normalize, words_prompts

SEED = 5


@dataclass
class Cfg:
    """The yaml's settings (and Dassl's defaults.py for what the yaml leaves out)."""

    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    prompt_depth: int = 9
    lr: float = 0.0035
    max_epoch: int = 5
    batch_size: int = 4
    warmup_epoch: int = 1
    warmup_cons_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4


def linear(layer: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer["weight"], layer["bias"])


def deep_prompts(prompts: list[torch.Tensor], replace: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Hook:
    """``ResidualAttentionBlock_MaPLe.forward``'s counter: every layer but the first takes the next prompt while
    any is left."""
    counter = 0

    def before_layer(index: int, x: torch.Tensor) -> torch.Tensor:
        nonlocal counter
        if index == 0 or not prompts or counter > len(prompts) - 1:
            return x
        x = replace(x, prompts[counter].expand(x.shape[0], -1, -1))
        counter += 1
        return x

    return before_layer


class MapleReference:
    """``CustomCLIP`` with its ``MultiModalPromptLearner`` on the tiny CLIP."""

    def __init__(
        self, model: Any, tokenizer: Any, classnames: list[str], cfg: Cfg, initial: dict[str, torch.Tensor]
    ) -> None:
        self.clip, self.n_ctx = PlainClip(model), cfg.n_ctx
        self.ctx, self.tokenized_prompts, self.token_prefix, self.token_suffix = words_prompts(
            self.clip, tokenizer, cfg.ctx_init, cfg.n_ctx, classnames
        )
        depth = cfg.prompt_depth - 1

        def tensor(name: str) -> torch.Tensor:
            return initial[name].clone().requires_grad_()

        self.compound_prompts_text = [tensor(f"deep_text.{i}") for i in range(depth)]
        self.proj = {p: tensor(f"proj.{p}") for p in ("weight", "bias")}
        self.compound_prompt_projections = [
            {p: tensor(f"deep_proj.{i}.{p}") for p in ("weight", "bias")} for i in range(depth)
        ]

    def parameters(self) -> list[torch.Tensor]:
        return [
            self.ctx,
            *self.compound_prompts_text,
            *self.proj.values(),
            *[t for layer in self.compound_prompt_projections for t in layer.values()],
        ]

    def state(self) -> dict[str, torch.Tensor]:
        """The learned tensors under fewclip's names (``MaplePrompts``), to compare."""
        state = {"ctx": self.ctx, "proj.weight": self.proj["weight"], "proj.bias": self.proj["bias"]}
        for i, prompt in enumerate(self.compound_prompts_text):
            state[f"deep_text.{i}"] = prompt
        for i, layer in enumerate(self.compound_prompt_projections):
            state.update({f"deep_proj.{i}.{p}": t for p, t in layer.items()})
        return {name: t.detach() for name, t in state.items()}

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """``CustomCLIP.forward`` without the label: the logits."""
        n_ctx = self.n_ctx
        ctx = self.ctx.unsqueeze(0).expand(len(self.token_prefix), -1, -1)
        prompts = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        shared_ctx = linear(self.proj, self.ctx)
        visual_deep = [
            linear(layer, prompt) for layer, prompt in zip(self.compound_prompt_projections, self.compound_prompts_text)
        ]
        text = self.clip.encode_text(
            self.tokenized_prompts,
            prompts,
            deep_prompts(self.compound_prompts_text, lambda x, p: torch.cat([x[:, :1], p, x[:, 1 + n_ctx :]], dim=1)),
        )
        features = self.clip.encode_image(
            image,
            lambda x: torch.cat([x, shared_ctx.expand(x.shape[0], -1, -1)], dim=1),
            deep_prompts(visual_deep, lambda x, p: torch.cat([x[:, : x.shape[1] - n_ctx], p], dim=1)),
        )
        return self.clip.logit_scale * normalize(features) @ normalize(text).T


class ConstantWarmup:
    """Dassl's ``ConstantWarmupScheduler`` around ``successor`` (``_BaseWarmupScheduler.step``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, successor: Any, warmup_epoch: int, cons_lr: float) -> None:
        self.optimizer, self.successor, self.warmup_epoch, self.cons_lr = optimizer, successor, warmup_epoch, cons_lr
        self.last_epoch = 0
        self.set_lr()  # _LRScheduler.__init__'s first step

    def set_lr(self) -> None:
        lr = self.successor.get_last_lr()[0] if self.last_epoch >= self.warmup_epoch else self.cons_lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
        else:
            self.last_epoch += 1
            self.set_lr()


def dassl_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """A train loader's batches: ``drop_last=is_train and len(data_source) >= batch_size``."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(order) >= batch_size and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    return batches


def reference_run(
    model: MapleReference, cfg: Cfg, pixels: torch.Tensor, labels: torch.Tensor, orders: list[list[int]]
) -> list[float]:
    """Dassl's ``TrainerX.run_epoch`` with ``MaPLe.forward_backward``; returns each epoch's rate."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, dampening=0, nesterov=False
    )
    scheduler = ConstantWarmup(
        optimizer,
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(cfg.max_epoch)),
        cfg.warmup_epoch,
        cfg.warmup_cons_lr,
    )
    rates = []
    for epoch in range(cfg.max_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        batches = dassl_batches(orders[epoch], cfg.batch_size)
        for batch_idx, batch in enumerate(batches):
            loss = F.cross_entropy(model.logits(pixels[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if batch_idx + 1 == len(batches):
                scheduler.step()
    return rates


def test_defaults_are_the_official_config() -> None:
    cfg, ours = Cfg(), MapleConfig()
    assert (ours.n_ctx, ours.ctx_init, ours.depth) == (cfg.n_ctx, cfg.ctx_init, cfg.prompt_depth)
    assert (ours.lr, ours.epochs, ours.batch_size) == (cfg.lr, cfg.max_epoch, cfg.batch_size)
    assert (ours.warmup_epochs, ours.warmup_lr) == (cfg.warmup_epoch, cfg.warmup_cons_lr)
    assert (ours.momentum, ours.weight_decay, ours.drop_last) == (cfg.momentum, cfg.weight_decay, True)


@pytest.mark.parametrize("picked", [slice(None), [0, 10, 20]], ids=["30_images", "3_images"])
def test_training_steps_and_logits_equal_the_reference(backbone: Any, shapes: dict[str, Any], picked: Any) -> None:
    """Three epochs (warm-up, then the cosine) in batches of 4: of 30 images the last partial batch of 2 is
    dropped (7 steps an epoch); 3 images, fewer than a batch, are one short batch. The learned tensors and the
    logits must agree within 1e-5 (fp32 rounding through two towers, 21 SGD steps)."""
    cfg = Cfg(prompt_depth=2, lr=0.05, max_epoch=3, warmup_cons_lr=1e-2)  # the tiny CLIP has 2 layers
    ours = MapleConfig(
        depth=cfg.prompt_depth,
        lr=cfg.lr,
        epochs=cfg.max_epoch,
        warmup_lr=cfg.warmup_cons_lr,
        augment=False,
        select="last",
    )
    train = shapes["train"]
    indices = list(range(len(train)))[picked] if isinstance(picked, slice) else picked
    train = ImageSet([train.paths[i] for i in indices], train.labels[indices])
    classes = shapes["classes"]
    initial = {k: v.detach().clone() for k, v in MapleNet(backbone, classes, ours, SEED).prompts.state_dict().items()}
    reference = MapleReference(backbone.model, backbone.tokenizer, classes, cfg, initial)
    # the init words' embedding rows (a lookup on both sides: exact)
    torch.testing.assert_close(initial["ctx"], reference.ctx.detach(), atol=0, rtol=0)

    head = MapleHead(ours).fit(Task(classes, ["a photo of a {}."], backbone, seed=SEED, shots=1), train)
    orders = [epoch_order(SEED, epoch, len(train)) for epoch in range(cfg.max_epoch)]
    rates = reference_run(reference, cfg, pixels_of(backbone, train), train.labels, orders)

    assert [row["lr"] for row in head.history_] == pytest.approx(rates, rel=1e-9, abs=0)
    learned, expected = head.prompts_state_, reference.state()
    assert set(learned) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(
            learned[name], value, atol=1e-5, rtol=0, msg=lambda message, name=name: f"{name}: {message}"
        )


def test_logits_equal_the_reference_with_the_learned_prompts(backbone: Any, shapes: dict[str, Any]) -> None:
    """The fitted head's logits on the test images and ``CustomCLIP.forward`` (eval) with the same learned
    tensors, within 1e-5 (fp32 rounding through two towers)."""
    cfg = Cfg(prompt_depth=2)
    ours = MapleConfig(depth=cfg.prompt_depth, lr=0.05, epochs=2, warmup_lr=1e-2, augment=False, select="last")
    head = MapleHead(ours).fit(
        Task(shapes["classes"], ["a photo of a {}."], backbone, seed=SEED, shots=1), shapes["train"]
    )
    learned = head.prompts_state_
    reference = MapleReference(backbone.model, backbone.tokenizer, shapes["classes"], cfg, learned)
    with torch.no_grad():
        reference.ctx.copy_(learned["ctx"])
    pixels = pixels_of(backbone, shapes["test"])
    with torch.no_grad():
        expected = reference.logits(pixels)
    assert not torch.allclose(learned["ctx"], MapleNet(backbone, shapes["classes"], ours, SEED).prompts.ctx, atol=1e-3)
    torch.testing.assert_close(head.image_logits(pixels), expected, atol=1e-5, rtol=0)
