"""clip_svd against the official CLIP-SVD code (HealthX-Lab/CLIP-SVD), re-implemented here from reading it:

- ``main.py`` ``get_arguments`` and ``configs/few_shot/*.yaml`` (natural images): ``--rank`` 1.0, ``--n_iters``
  200; lr 5e-4, batch 32, weight decay 0.01, ``include_train_layers`` "all", both encoders, q, k, v, the output
  projection and the MLP trained; ``logit_scale = 100``.
- ``train.py`` ``run_training``: every block's ``nn.MultiheadAttention`` becomes a ``PlainMultiHeadAttention``
  (``svf_utils/PlainHeadAttention.py`` ``set_parameters``: the fused in-projection cut into ``q_proj``,
  ``k_proj``, ``v_proj``, the output projection as ``proj``), then ``resolver(model, global_low_rank_ratio=rank)``.
- ``svf_utils/svf_torch.py``: ``DatafreeSVD`` gives every ``nn.Linear`` the rank ``round_to_nearest(min(out,
  in), ratio, base 4)``; ``d_nsvd``: ``U, S, V = torch.svd(W)``, the first ``rank`` columns of U, values of S and
  rows of V^T; ``replace_fullrank_with_lowrank`` makes each an ``SVD_Linear``: ``fc_U(fc_V(x) * vector_S)``,
  ``fc_V.weight`` = V^T, ``vector_S`` = S (1, rank), ``fc_U.weight`` = U with the layer's bias.
- ``svf_utils/utils.py`` ``set_clip_trainable_parameters``: every parameter frozen, then a ``vector_S`` trains
  when the first number in its name is in ``include_layers`` and it is in ``visual`` (image encoder) or not
  (text encoder), of an ``mlp``, ``attn.q_proj``, ``attn.k_proj``, ``attn.v_proj`` or ``attn.proj``.
- ``train.py`` ``run_training``: ``AdamW(clip_model.parameters(), weight_decay, betas=(0.9, 0.999), lr)``,
  ``CosineAnnealingLR(total_iters = n_iters * shots, eta_min=1e-6)`` stepped after every iteration; each
  iteration encodes ``template.format(classname.replace('_', ' '))`` through the tuned text encoder, the images
  through the tuned image encoder, ``logit_scale * image @ text.T`` of the normalised features,
  ``cross_entropy``; epochs over the train loader (``datasets/utils.py`` ``build_data_loader``:
  ``drop_last=False``) until the iteration count is reached.

The reference runs on OpenAI's forward over the tiny CLIP's weights (``plain_clip``), with its linear layers
named as OpenAI's CLIP names them (``visual.transformer.resblocks.0.attn.q_proj``, ``transformer.resblocks.0.
mlp.c_fc``) so that the official name rules pick what trains. The same inputs go to both: the class prompts
tokenised by the tiny CLIP's tokenizer, the images with the model's own preprocessing (augmentation off: the
reference's crops draw from another RNG) and the batch order fewclip draws (``epoch_order``). Precision is fp32
on both sides (the reference's fp16 autocast needs CUDA); the tiny CLIP's own ``logit_scale.exp()`` stands in
for the reference's fixed 100, as fewclip uses the backbone's (100 on every OpenAI CLIP). The reference
factors in float32 as ``torch.svd`` does, fewclip in float64: singular values are compared, and the
rebuilt weights, to a tolerance (a singular vector pair's sign may differ; it changes nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import floor
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from fewclip.heads import Task
from fewclip.heads.encoders.clip_svd import ClipSvdConfig, ClipSvdHead, SingularValueLinear
from fewclip.training.image_batches import epoch_order

from tests.heads.image_tasks import pixels_of
from tests.reference.lora_loop import run_lora_loop
from tests.reference.plain_clip import PlainClip

SEED = 3
TEMPLATE = "a photo of a {}."  # the few-shot yaml's template of most natural datasets
OPENAI_PARTS = {  # a Hugging Face block linear's name -> OpenAI CLIP's (after PlainMultiHeadAttention)
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


@dataclass
class Args:
    """``main.py`` defaults and ``configs/few_shot/dtd.yaml`` (the keys that shape the computation)."""

    rank: float = 1.0
    n_iters: int = 200
    lr: float = 5e-4
    batch_size: int = 32
    weight_decay: float = 0.01
    shots: int = 16
    include_train_layers: str = "all"
    train_image_encoder: bool = True
    train_text_encoder: bool = True
    train_mlp: bool = True
    train_q: bool = True
    train_k: bool = True
    train_v: bool = True
    train_o_proj: bool = True


def openai_name(hf_name: str) -> str:
    """``vision_model.encoder.layers.1.self_attn.out_proj`` -> ``visual.transformer.resblocks.1.attn.proj``."""
    tower, _, _, index, part = hf_name.split(".", 4)
    prefix = "visual.transformer" if tower == "vision_model" else "transformer"
    return f"{prefix}.resblocks.{index}.{OPENAI_PARTS[part]}"


def round_to_nearest(n: int, ratio: float = 1.0, base_number: int = 4) -> int:
    """``svf_torch.round_to_nearest`` (``allow_rank_eq1=True``)."""
    return min(max(floor(floor(n * ratio) / base_number) * base_number, 1), n)


def trains(name: str, args: Args) -> bool:
    """``set_clip_trainable_parameters`` on a ``vector_S`` named ``name``."""
    layers = {"all": range(12), "top": range(8, 12), "bottom": range(4), "middle": range(4, 8)}
    if int(re.findall(r"\d+", name)[0]) not in layers[args.include_train_layers]:
        return False
    if not (args.train_image_encoder if "visual" in name else args.train_text_encoder):
        return False
    return (
        ("mlp" in name and args.train_mlp)
        or ("attn.q_proj" in name and args.train_q)
        or ("attn.k_proj" in name and args.train_k)
        or ("attn.v_proj" in name and args.train_v)
        or ("attn.proj" in name and args.train_o_proj)
    )


class SvdReference:
    """The tiny CLIP with every block linear an ``SVD_Linear`` (``resolver``) and the official trainable set."""

    training = True  # no dropout: train and eval compute the same

    def __init__(self, model: Any, args: Args) -> None:
        self.clip = PlainClip(model, linear=self.linear)
        self.u, self.v, self.s = {}, {}, {}  # by the Hugging Face name, as PlainClip calls ``linear``
        for key, weight in self.clip.weights.items():
            name = key.removesuffix(".weight")
            if ".encoder.layers." not in key or not key.endswith(".weight") or "layer_norm" in key:
                continue
            rank = round_to_nearest(min(weight.shape), args.rank)
            u, s, v = torch.svd(weight)  # d_nsvd
            self.u[name], self.v[name] = u[:, :rank], v.T[:rank, :]
            self.s[name] = s[:rank].unsqueeze(0).clone().requires_grad_(trains(f"{openai_name(name)}.vector_S", args))

    def parameters(self) -> list[torch.Tensor]:
        """What has gradients of ``clip_model.parameters()``: the trainable ``vector_S``."""
        return [s for s in self.s.values() if s.requires_grad]

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``SVD_Linear.forward``: ``fc_U(fc_V(x) * vector_S)``."""
        hidden = F.linear(x, self.v[name]) * self.s[name]
        return F.linear(hidden, self.u[name], self.clip.weights[f"{name}.bias"])

    def weight(self, name: str) -> torch.Tensor:
        """The (out, in) weight the layer applies: U diag(S) V^T."""
        return (self.u[name] * self.s[name]) @ self.v[name]

    def logits(self, token_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.logits(token_ids, pixels)


def class_tokens(backbone: Any, classnames: list[str]) -> torch.Tensor:
    texts = [TEMPLATE.format(name.replace("_", " ")) for name in classnames]
    return backbone.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]


def factored(head: ClipSvdHead) -> dict[str, SingularValueLinear]:
    return {n: m for n, m in head.model_.named_modules() if isinstance(m, SingularValueLinear)}


def test_defaults_are_the_official_arguments() -> None:
    args, cfg = Args(), ClipSvdConfig()
    assert (cfg.lr, cfg.iterations_per_shot, cfg.batch_size, cfg.weight_decay) == (
        args.lr,
        args.n_iters,
        args.batch_size,
        args.weight_decay,
    )
    assert (cfg.min_lr, cfg.drop_last, cfg.layers) == (1e-6, False, None)  # run_training; build_data_loader; "all"
    assert cfg.towers == ["text", "vision"] and cfg.targets == ["q", "k", "v", "out", "mlp"]


def test_training_steps_equal_the_reference(backbone: Any, shapes: dict[str, Any]) -> None:
    """Six iterations on 30 images in batches of 8: epoch 1 is 8, 8, 8 and the last partial batch of 6, epoch 2
    stops after two batches; the cosine runs over the six. Every trained singular value must agree within 1e-4
    (each vector moves by 0.06-0.07 here; the float32 and float64 factorisations and the two forwards differ by
    fp32 rounding: 1.1e-5 at the most after the six Adam steps, measured), and so must every rebuilt weight
    U diag(s) V^T (1.7e-6 measured)."""
    args = Args(lr=2e-2, n_iters=3, batch_size=8, shots=2)  # a rate the tiny CLIP moves visibly with
    cfg = ClipSvdConfig(
        lr=args.lr, iterations_per_shot=args.n_iters, batch_size=args.batch_size, augment=False, select="last"
    )
    train = shapes["train"]
    head = ClipSvdHead(cfg).fit(Task(shapes["classes"], [TEMPLATE], backbone, seed=SEED, shots=args.shots), train)

    reference = SvdReference(backbone.model, args)
    initial = {name: s.detach().clone() for name, s in reference.s.items()}
    orders = [epoch_order(SEED, epoch, len(train)) for epoch in range(2)]
    inputs = (class_tokens(backbone, shapes["classes"]), pixels_of(backbone, train), train.labels)
    total_iters = args.n_iters * args.shots  # run_training's loop is CLIP-LoRA's (lora_loop)
    epoch_rates = run_lora_loop(reference, total_iters, args.batch_size, args.lr, args.weight_decay, inputs, orders)

    assert [row["lr"] for row in head.history_] == pytest.approx(epoch_rates, rel=1e-9, abs=0)
    layers = factored(head)
    assert set(layers) == {name for name, s in reference.s.items() if s.requires_grad} == set(reference.s)
    moved = max(float((reference.s[n].detach() - initial[n]).abs().max()) for n in layers)
    assert moved > 1e-2, moved  # trained visibly
    for name, layer in layers.items():
        torch.testing.assert_close(
            layer.singular_values.detach(),
            reference.s[name].detach()[0],
            atol=1e-4,
            rtol=0,
            msg=lambda message, name=name: f"{name}: {message}",
        )
        torch.testing.assert_close(layer.weight.detach(), reference.weight(name).detach(), atol=1e-4, rtol=0)


def test_logits_equal_the_reference_with_the_learned_singular_values(backbone: Any, shapes: dict[str, Any]) -> None:
    """The fitted head's logits on the test images and the reference's with the head's singular values in its
    ``vector_S``, within 1e-4 (fp32 rounding through two towers: 1.1e-5 measured; logits of order 3)."""
    args = Args(lr=2e-2, n_iters=2, batch_size=8, shots=2)
    cfg = ClipSvdConfig(lr=args.lr, iterations_per_shot=args.n_iters, batch_size=args.batch_size, select="last")
    head = ClipSvdHead(cfg).fit(
        Task(shapes["classes"], [TEMPLATE], backbone, seed=SEED, shots=args.shots), shapes["train"]
    )
    reference = SvdReference(backbone.model, args)
    with torch.no_grad():
        for name, layer in factored(head).items():
            reference.s[name].copy_(layer.singular_values[None])
        pixels = pixels_of(backbone, shapes["test"])
        expected = reference.logits(class_tokens(backbone, shapes["classes"]), pixels)
    torch.testing.assert_close(head.image_logits(pixels), expected, atol=1e-4, rtol=0)
