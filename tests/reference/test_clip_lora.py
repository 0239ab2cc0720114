"""clip_lora against the official CLIP-LoRA code (MaxZanella/CLIP-LoRA), re-implemented here from reading it:

- ``run_utils.py`` ``get_arguments``: the defaults (rank 2, alpha 1, dropout 0.25, lr 2e-4, 500 iterations per
  shot, batch 32; LoRA on q, k, v of all layers of both encoders).
- ``loralib/utils.py`` ``apply_lora``: every ``MultiheadAttention`` of the blocks at ``INDEX_POSITIONS_*['all']``
  of the text and the vision transformer becomes a ``PlainMultiheadAttentionLoRA`` with LoRA on q, k, v;
  ``get_lora_parameters``: only the ``lora_`` tensors train.
- ``loralib/layers.py`` ``LoRALayer.__init__``: ``scaling = lora_alpha / math.sqrt(r)`` (the ``alpha / r``
  line is commented out); ``init_lora_param``: A (r, in) Kaiming-uniform with a = sqrt(5), B (out, r) zero;
  ``LinearLoRA.forward``: in training ``W x + b + (dropout(x) @ (B A)^T) * scaling``, dropout on the LoRA
  branch's input only; in eval (``lora_train(False)``) the merged ``W + (B A) * scaling``.
- ``lora.py`` ``run_lora``: AdamW(weight_decay=1e-2, betas=(0.9, 0.999), lr), CosineAnnealingLR over
  ``n_iters * shots`` iterations with eta_min=1e-6, stepped after every iteration; each iteration encodes
  ``template[0].format(name)`` through the tuned text encoder (train mode: LoRA dropout on), the images through
  the tuned image encoder, ``logit_scale * image @ text.T`` of the normalised features, ``cross_entropy``; the
  epochs run over the train loader until the iteration count is reached (``break`` inside the last epoch).
- ``datasets/utils.py`` ``build_data_loader``: ``shuffle=True``, ``drop_last=False`` (the last partial batch
  trains); ``main.py`` builds the train loader that way.

The same inputs and initial state go to both: the class prompts tokenised by the tiny CLIP's tokenizer, the
images with the model's own preprocessing (augmentation off: the reference's crops draw from another RNG), the
batch order fewclip draws (``epoch_order``: the reference's ``RandomSampler`` draws from torch's RNG), fewclip's
initial A, and the same torch seed, so that the reference's dropout, drawn in the same order and shapes as
peft's (text tower then image tower, q then k then v of each layer), draws the same masks. Precision is fp32 on
both sides (the reference's fp16 autocast needs CUDA). ``main.py`` fixes ``logit_scale = 100``, OpenAI CLIP's
``logit_scale.exp()``; the tiny CLIP's own ``logit_scale.exp()`` stands in for it, as fewclip uses the
backbone's (100 on every OpenAI CLIP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from fewclip.heads import Task
from fewclip.heads.encoders.clip_lora import ClipLoraConfig, ClipLoraHead
from fewclip.training.image_batches import epoch_order
from fewclip.heads.encoders.lora_layers import adapter_state, lora_towers

from tests.heads.image_tasks import pixels_of
from tests.reference.lora_loop import run_lora_loop
from tests.reference.plain_clip import PlainClip

SEED = 3
TEMPLATE = "a photo of a {}."  # every dataset's ``template[0]`` in CLIP-LoRA's datasets/*.py


@dataclass
class Args:
    """``run_utils.py`` ``get_arguments`` defaults (the ones that shape the computation)."""

    r: int = 2
    alpha: float = 1
    dropout_rate: float = 0.25
    lr: float = 2e-4
    n_iters: int = 500
    batch_size: int = 32
    shots: int = 16
    params: tuple[str, ...] = ("q", "k", "v")


class LoraReference:
    """The tiny CLIP with CLIP-LoRA's ``apply_lora`` (encoder 'both', position 'all') and ``LinearLoRA``."""

    def __init__(
        self, model: Any, args: Args, lora_a: dict[str, torch.Tensor], lora_b: dict[str, torch.Tensor] | None = None
    ) -> None:
        self.clip = PlainClip(model, linear=self.linear)
        layers = {
            "text": model.config.text_config.num_hidden_layers,
            "vision": model.config.vision_config.num_hidden_layers,
        }
        names = [
            f"{tower}_model.encoder.layers.{i}.self_attn.{p}_proj"
            for tower, count in layers.items()
            for i in range(count)
            for p in args.params
        ]
        self.lora_a = {name: lora_a[name].clone().requires_grad_() for name in names}
        out = {name: self.clip.weights[f"{name}.weight"].shape[0] for name in names}
        self.lora_b = {
            name: (torch.zeros(out[name], args.r) if lora_b is None else lora_b[name].clone()).requires_grad_()
            for name in names
        }  # register_lora_param + init_lora_param: B (out, r) zero
        self.scaling = args.alpha / math.sqrt(args.r)  # LoRALayer.__init__
        self.dropout = args.dropout_rate
        self.training = True

    def parameters(self) -> list[torch.Tensor]:
        """``get_lora_parameters``."""
        return [*self.lora_a.values(), *self.lora_b.values()]

    def update(self, name: str) -> torch.Tensor:
        """(out, in) ``merge_BA * scaling``: what the adapter adds to the frozen weight."""
        return (self.lora_b[name] @ self.lora_a[name]) * self.scaling

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``LinearLoRA.forward`` (a frozen ``nn.Linear`` where no LoRA was applied)."""
        if name not in self.lora_a:
            return self.clip.frozen_linear(name, x)
        weight, bias = self.clip.weights[f"{name}.weight"], self.clip.weights[f"{name}.bias"]
        if self.training and self.dropout > 0:
            return F.linear(x, weight, bias) + F.dropout(x, self.dropout) @ self.update(name).T
        return F.linear(x, weight + self.update(name), bias)  # merged (eval, or no dropout: merge_lora_param)

    def logits(self, token_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.logits(token_ids, pixels)


def reference_run(
    model: LoraReference,
    args: Args,
    token_ids: torch.Tensor,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    orders: list[list[int]],
) -> list[float]:
    """``run_lora``'s training loop (weight decay 1e-2); ``orders[e]`` is epoch e's shuffled order. Returns the
    rate each epoch starts at."""
    inputs = (token_ids, pixels, labels)
    return run_lora_loop(model, args.n_iters * args.shots, args.batch_size, args.lr, 1e-2, inputs, orders)


def reference_name(peft_name: str) -> tuple[str, str]:
    """``text_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight`` -> (the projection, 'A')."""
    projection, rest = peft_name.split(".lora_")
    return projection, rest[0]


def lora_tensors(adapter: dict[str, torch.Tensor], which: str) -> dict[str, torch.Tensor]:
    """fewclip's A (or B) tensors by the projection they adapt."""
    return {reference_name(n)[0]: v for n, v in adapter.items() if reference_name(n)[1] == which}


def class_tokens(backbone: Any, classnames: list[str]) -> torch.Tensor:
    """(C, L) ids of ``template.format(classname.replace('_', ' '))`` (``clip.tokenize``, here the tiny CLIP's
    tokenizer)."""
    texts = [TEMPLATE.format(name.replace("_", " ")) for name in classnames]
    return backbone.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]


def fewclip_updates(head: ClipLoraHead) -> dict[str, torch.Tensor]:
    """(out, in) weight change of every adapted projection of the fitted head, measured through the module
    (eval: its output on the identity minus the frozen layer's), whatever its scaling is."""
    updates = {}
    modules = dict(head.model_.named_modules())
    for name in {reference_name(n)[0] for n in adapter_state(head.model_)}:
        module = modules[name]
        module.eval()
        eye = torch.eye(module.in_features)
        with torch.no_grad():
            updates[name] = (module(eye) - module.base_layer(eye)).T
    return updates


def test_defaults_are_the_official_arguments() -> None:
    args, cfg = Args(), ClipLoraConfig()
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.lr) == (args.r, args.alpha, args.dropout_rate, args.lr)
    assert (cfg.iterations_per_shot, cfg.batch_size) == (args.n_iters, args.batch_size)
    assert cfg.targets == [f"{p}_proj" for p in args.params]
    assert (cfg.weight_decay, cfg.min_lr, cfg.drop_last) == (1e-2, 1e-6, False)  # lora.py; build_data_loader


def test_training_steps_equal_the_reference(backbone: Any, shapes: dict[str, Any]) -> None:
    """Six iterations on 30 images in batches of 8: epoch 1 is 8, 8, 8 and the last partial batch of 6,
    epoch 2 stops after two batches; the cosine runs over the six, LoRA dropout 0.25 on. Each projection's
    scaled update (alpha / sqrt(r) * B A) must agree within 1e-5 (it is of order 5e-3 here; fp32 rounding of
    two code paths through six Adam steps stays below 1e-7)."""
    args = Args(lr=1e-2, n_iters=3, batch_size=8, shots=2)  # a rate the tiny CLIP moves visibly with
    cfg = ClipLoraConfig(
        lr=args.lr, iterations_per_shot=args.n_iters, batch_size=args.batch_size, augment=False, select="last"
    )
    train = shapes["train"]
    initial = adapter_state(
        lora_towers(backbone, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, SEED).module
    )  # fit's init
    for name, value in initial.items():  # init_lora_param: B zero, A Kaiming-uniform(a=sqrt(5)): |A| <= 1/sqrt(in)
        if reference_name(name)[1] == "B":
            assert torch.count_nonzero(value) == 0, name
        else:
            assert value.shape[0] == args.r and value.abs().max() <= 1 / math.sqrt(value.shape[1]), name

    head = ClipLoraHead(cfg).fit(Task(shapes["classes"], [TEMPLATE], backbone, seed=SEED, shots=args.shots), train)

    reference = LoraReference(backbone.model, args, lora_tensors(initial, "A"))
    orders = [epoch_order(SEED, epoch, len(train)) for epoch in range(2)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)  # fewclip seeds its dropout stream with the task's seed
        epoch_rates = reference_run(
            reference, args, class_tokens(backbone, shapes["classes"]), pixels_of(backbone, train), train.labels, orders
        )

    assert [row["lr"] for row in head.history_] == pytest.approx(epoch_rates, rel=1e-9, abs=0)
    updates = fewclip_updates(head)
    assert set(updates) == set(reference.lora_a)  # q, k, v of every layer of both towers
    for name, update in updates.items():
        torch.testing.assert_close(
            update,
            reference.update(name).detach(),
            atol=1e-5,
            rtol=0,
            msg=lambda message, name=name: f"{name}: {message}",
        )


def test_logits_equal_the_reference_with_the_learned_adapter(backbone: Any, shapes: dict[str, Any]) -> None:
    """The fitted head's logits on the test images and the reference's (eval: merged weights) with the same
    A and B, within 1e-5 (fp32 rounding through two towers; logits of order 1)."""
    args = Args(lr=1e-2, n_iters=2, batch_size=8, shots=2)
    cfg = ClipLoraConfig(lr=args.lr, iterations_per_shot=args.n_iters, batch_size=args.batch_size, select="last")
    head = ClipLoraHead(cfg).fit(
        Task(shapes["classes"], [TEMPLATE], backbone, seed=SEED, shots=args.shots), shapes["train"]
    )
    adapter = adapter_state(head.model_)
    reference = LoraReference(backbone.model, args, lora_tensors(adapter, "A"), lora_tensors(adapter, "B"))
    reference.training = False
    pixels = pixels_of(backbone, shapes["test"])
    with torch.no_grad():
        expected = reference.logits(class_tokens(backbone, shapes["classes"]), pixels)
    assert max(float(reference.update(name).detach().abs().max()) for name in reference.lora_a) > 1e-3  # trained
    torch.testing.assert_close(head.image_logits(pixels), expected, atol=1e-5, rtol=0)
