"""promptsrc against the official PromptSRC code (muzairkhattak/PromptSRC, trained through
KaiyangZhou/Dassl.pytorch), re-implemented here from reading it:

- ``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``: N_CTX_VISION 4, N_CTX_TEXT 4, CTX_INIT
  "a photo of a", PROMPT_DEPTH_VISION 9, PROMPT_DEPTH_TEXT 9, TEXT_LOSS_WEIGHT 25, IMAGE_LOSS_WEIGHT 10,
  GPA_MEAN 15, GPA_STD 1; SGD lr 0.0025, 20 epochs, batch 4, cosine after one constant warm-up epoch at 1e-5.
- ``trainers/promptsrc.py`` ``VLPromptLearner.__init__``: with CTX_INIT and N_CTX_TEXT <= 4, ``ctx`` is the
  embedding of the tokenised init words at positions 1..n_ctx; the class prompts are ``ctx_init + " " + name +
  "."``, ``token_prefix`` their SOS embedding, ``token_suffix`` everything after position n_ctx;
  ``fixed_embeddings``: for each of ``IMAGENET_TEMPLATES`` (``trainers/imagenet_templates.py``) frozen CLIP's
  ``encode_text`` of ``template.replace("{}", name)``, stacked on dim 1 and averaged over the templates
  (unnormalised). ``CustomCLIP.forward`` in training: ``logit_scale.exp() * image @ text.T`` of the normalised
  prompted features, ``fixed_embeddings`` normalised, ``ZS_image_encoder`` (CLIP's image tower without prompts)
  normalised under ``no_grad``, ``zero_shot_logits = logit_scale * zs_image @ fixed.T``.
  ``PromptSRC.forward_backward`` (PREC not "amp"): ``cross_entropy + l1_loss(text, fixed) * TEXT_LOSS_WEIGHT +
  l1_loss(image, zs_image) * IMAGE_LOSS_WEIGHT + kl_div(log_softmax(logits), log_softmax(zero_shot_logits),
  reduction="sum", log_target=True) / logits.numel()``; after an epoch's last batch ``update_lr``, then GPA:
  the state dict times ``gauss[epoch - 1]`` (``state_dict_weighting``) added to the running sum
  (``state_dict_add``), which is loaded after the last epoch. ``build_model``: ``gauss = get_gauss(GPA_MEAN,
  GPA_STD)`` at epochs 1..MAX_EPOCH, divided by its sum.
- ``clip/model.py`` ``ResidualAttentionBlock_IVLP.forward``: block i with ``prompts_needed > i`` and i != 0
  replaces the text rows 1..n_ctx (text) or the last n_ctx vision tokens (vision) by its own ``VPT_shallow``
  (N(0, 0.02)); ``VisionTransformer.forward``: ``VPT`` appended after the positional embedding, before ``ln_pre``.
- Dassl's loop, optimiser and schedule: ``tests/reference/dassl_clip.py`` (``dassl_train``).

The same inputs and initial state go to both: the prompts tokenised by the tiny CLIP's tokenizer, the images with
the model's own preprocessing (augmentation off), the batch order fewclip draws (``epoch_order``) and fewclip's
random initial prompts. Precision is fp32 on both sides (the reference trains in fp16, PREC "fp16").
"""

from __future__ import annotations

import ast
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from torch.nn import functional as F

from fewclip.heads import ImageSet, Task
from fewclip.heads.encoders.promptsrc import (
    PromptSRCConfig,
    PromptSRCHead,
    PromptSRCNet,
    gpa_weights,
    teacher_text_features,
)
from fewclip.heads.prompts.clip_templates import IMAGENET_TEMPLATES
from fewclip.training.image_batches import epoch_order
from fewclip.training.images_loop import PenalizedLogits

from tests.heads.image_tasks import pixels_of
from tests.reference.dassl_clip import DasslOptim, dassl_train
from tests.reference.plain_clip import PlainClip, normalize, words_prompts

SEED = 7


# configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml, the keys that train (as read)
OFFICIAL_YAML = """
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 4
OPTIM:
  NAME: "sgd"
  LR: 0.0025
  MAX_EPOCH: 20
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5
TRAINER:
  PROMPTSRC:
    N_CTX_VISION: 4
    N_CTX_TEXT: 4
    CTX_INIT: "a photo of a"
    PREC: "fp16"
    PROMPT_DEPTH_VISION: 9
    PROMPT_DEPTH_TEXT: 9
    TEXT_LOSS_WEIGHT: 25
    IMAGE_LOSS_WEIGHT: 10
    GPA_MEAN: 15
    GPA_STD: 1
"""


def yacs_node(value: Any) -> Any:
    """A yaml tree as yacs hands it to the trainer: attribute access, and strings that are Python literals decoded
    (yacs's ``_decode_cfg_value``: "1e-5" is 1e-05)."""
    if isinstance(value, dict):
        return SimpleNamespace(**{key: yacs_node(item) for key, item in value.items()})
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def official_cfg(changes: dict[str, Any] | None = None) -> Any:
    """The yaml's cfg, with ``changes`` ({"OPTIM.LR": 0.01, ...}) merged as a command line's opts would be."""
    tree = yaml.safe_load(OFFICIAL_YAML)
    for dotted, value in (changes or {}).items():
        *path, key = dotted.split(".")
        node = tree
        for part in path:
            node = node[part]
        assert key in node, dotted  # yacs refuses a key the config does not have
        node[key] = value
    return yacs_node(tree)


def dassl_optim(cfg: Any) -> DasslOptim:
    """The OPTIM keys (and the train loader's batch) as ``dassl_train`` takes them; Dassl's defaults for the rest."""
    o = cfg.OPTIM
    return DasslOptim(o.LR, o.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, o.WARMUP_EPOCH, o.WARMUP_CONS_LR)


def get_gauss(mu: float, sigma: float) -> Callable[[float], float]:
    """``PromptSRC.get_gauss``: the normal density."""
    return lambda x: float((1 / (sigma * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((x - mu) / sigma) ** 2))


def official_gauss(max_epoch: int, mean: float, std: float) -> np.ndarray:
    """``build_model``'s ``self.gauss``: the density at epochs 1..N over its sum."""
    gauss = np.array([get_gauss(mean, std)(a) for a in range(1, max_epoch + 1)])
    return gauss / sum(gauss)


class IVLPBlocks:
    """The blocks of ``Transformer`` built with ``prompts_needed=depth`` as a ``before_layer`` hook: block i with
    ``prompts_needed > i`` and i != 0 owns a ``VPT_shallow`` (``vpt_shallow[i]``, keys 1..depth-1) and swaps it in
    (``replace``) before attending; the others pass ``x`` on."""

    def __init__(self, vpt_shallow: dict[int, torch.Tensor], replace: Callable[..., torch.Tensor]) -> None:
        self.vpt_shallow, self.replace = vpt_shallow, replace

    def __call__(self, index: int, x: torch.Tensor) -> torch.Tensor:
        prompt = self.vpt_shallow.get(index)
        return x if prompt is None else self.replace(x, prompt.expand(x.shape[0], -1, -1))


class PromptSRCReference:
    """``CustomCLIP`` with its ``VLPromptLearner`` and the IVLP towers on the tiny CLIP."""

    def __init__(
        self, model: Any, tokenizer: Any, classnames: list[str], cfg: Any, initial: dict[str, torch.Tensor]
    ) -> None:
        """``initial``: fewclip's random initial prompts, which the IVLP blocks' ``VPT_shallow`` and the vision
        tower's ``VPT`` start from instead of their own N(0, 0.02) draws."""
        self.cfg = cfg.TRAINER.PROMPTSRC
        self.clip = PlainClip(model)
        self.vpt = initial["vision_ctx"].clone().requires_grad_()
        self.text_vpt = {
            i: initial[f"deep_text.{i - 1}"].clone().requires_grad_() for i in range(1, self.cfg.PROMPT_DEPTH_TEXT)
        }
        self.vision_vpt = {
            i: initial[f"deep_vision.{i - 1}"].clone().requires_grad_() for i in range(1, self.cfg.PROMPT_DEPTH_VISION)
        }
        self.ctx, self.tokenized_prompts, self.token_prefix, self.token_suffix = words_prompts(
            self.clip, tokenizer, self.cfg.CTX_INIT, self.cfg.N_CTX_TEXT, classnames
        )
        with torch.no_grad():
            all_teacher_features = []
            for single_template in IMAGENET_TEMPLATES:
                x = [single_template.replace("{}", name) for name in classnames]
                x_tokenized = tokenizer(x, padding=True, return_tensors="pt")["input_ids"]
                all_teacher_features.append(self.clip.encode_text(x_tokenized).unsqueeze(1))
            self.fixed_embeddings = torch.cat(all_teacher_features, dim=1).mean(dim=1)

    def named(self) -> dict[str, torch.Tensor]:
        """The learned tensors under fewclip's names (``IVLPPrompts``)."""
        named = {"ctx": self.ctx, "vision_ctx": self.vpt}
        named.update({f"deep_text.{i - 1}": t for i, t in self.text_vpt.items()})
        named.update({f"deep_vision.{i - 1}": t for i, t in self.vision_vpt.items()})
        return named

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> Any:
        """``CustomCLIP.forward``: the logits, or in training (a label given) its seven outputs."""
        n_ctx, n_vis = self.cfg.N_CTX_TEXT, self.cfg.N_CTX_VISION
        ctx = self.ctx.unsqueeze(0).expand(len(self.token_prefix), -1, -1)
        prompts = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        text_features = self.clip.encode_text(
            self.tokenized_prompts,
            prompts,
            IVLPBlocks(self.text_vpt, lambda x, p: torch.cat([x[:, :1], p, x[:, 1 + n_ctx :]], 1)),
        )
        image_features = self.clip.encode_image(
            image,
            lambda x: torch.cat([x, self.vpt.expand(x.shape[0], -1, -1)], dim=1),
            IVLPBlocks(self.vision_vpt, lambda x, p: torch.cat([x[:, : x.shape[1] - n_vis], p], 1)),
        )
        image_features, text_features = normalize(image_features), normalize(text_features)
        logit_scale = self.clip.logit_scale
        logits = logit_scale * image_features @ text_features.t()
        if label is None:
            return logits
        fixed_embeddings = normalize(self.fixed_embeddings)
        with torch.no_grad():
            zero_shot_features = normalize(self.clip.encode_image(image))
            zero_shot_logits = logit_scale * zero_shot_features @ fixed_embeddings.t()
        return (
            F.cross_entropy(logits, label),
            text_features,
            fixed_embeddings,
            zero_shot_features,
            image_features,
            zero_shot_logits,
            logits,
        )

    def loss(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``PromptSRC.forward_backward``'s loss."""
        loss_ce, text, fixed, zs_image, image_ft, zero_shot_logits, logits = self.forward(image, label)
        loss_scl_text = F.l1_loss(text, fixed, reduction="mean") * self.cfg.TEXT_LOSS_WEIGHT
        loss_scl_image = F.l1_loss(image_ft, zs_image, reduction="mean") * self.cfg.IMAGE_LOSS_WEIGHT
        l_scl_logits = (
            F.kl_div(
                F.log_softmax(logits / 1, dim=1),
                F.log_softmax(zero_shot_logits / 1, dim=1),
                reduction="sum",
                log_target=True,
            )
            * (1 * 1)
            / logits.numel()
        )
        return loss_ce + (l_scl_logits + loss_scl_text + loss_scl_image)


# fewclip's promptsrc key -> the yacs key it takes its value from
OFFICIAL_KEYS = {
    "n_ctx_text": "TRAINER.PROMPTSRC.N_CTX_TEXT",
    "n_ctx_vision": "TRAINER.PROMPTSRC.N_CTX_VISION",
    "ctx_init": "TRAINER.PROMPTSRC.CTX_INIT",
    "text_depth": "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT",
    "vision_depth": "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION",
    "text_loss_weight": "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT",
    "image_loss_weight": "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT",
    "gpa_mean": "TRAINER.PROMPTSRC.GPA_MEAN",
    "gpa_std": "TRAINER.PROMPTSRC.GPA_STD",
    "lr": "OPTIM.LR",
    "epochs": "OPTIM.MAX_EPOCH",
    "warmup_epochs": "OPTIM.WARMUP_EPOCH",
    "warmup_lr": "OPTIM.WARMUP_CONS_LR",
    "batch_size": "DATALOADER.TRAIN_X.BATCH_SIZE",
}


def official_value(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def ours(cfg: Any, **changes: Any) -> PromptSRCConfig:
    """fewclip's block with the reference's settings (augmentation off: Dassl's crops draw from another RNG)."""
    values = {key: official_value(cfg, dotted) for key, dotted in OFFICIAL_KEYS.items()}
    return PromptSRCConfig(**{**values, "augment": False, **changes})


def tiny_cfg(**optim: Any) -> Any:
    """The tiny CLIP has 2 layers a tower: depth 2 (one deep prompt each); GPA over a few epochs; ``optim``: OPTIM
    keys."""
    tiny = {"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 2}
    tiny |= {"TRAINER.PROMPTSRC.GPA_MEAN": 2.0, "TRAINER.PROMPTSRC.GPA_STD": 1.0}
    return official_cfg(tiny | {f"OPTIM.{key}": value for key, value in optim.items()})


def test_defaults_are_the_official_config() -> None:
    cfg, mine = official_cfg(), PromptSRCConfig()
    for key, dotted in OFFICIAL_KEYS.items():
        assert getattr(mine, key) == official_value(cfg, dotted), (key, dotted)
    o = dassl_optim(cfg)
    assert (mine.momentum, mine.weight_decay) == (o.momentum, o.weight_decay)  # Dassl's defaults.py
    assert cfg.OPTIM.NAME == "sgd" and (cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_TYPE) == ("cosine", "constant")
    assert mine.warmup_lr == 1e-5 and mine.teacher_templates == "imagenet"
    assert mine.drop_last and mine.precision == "fp32" and cfg.TRAINER.PROMPTSRC.PREC == "fp16"  # see the doc


def test_the_teacher_templates_are_the_official_sixty() -> None:
    """``IMAGENET_TEMPLATES`` as read: 60 templates, first and last as in the file, one slot each."""
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 60
    assert IMAGENET_TEMPLATES[0] == "a photo of a {}." and IMAGENET_TEMPLATES[-1] == "itap of the {}."
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)


@pytest.mark.parametrize("epochs,mean,std", [(20, 15, 1), (20, 6, 10), (50, 30, 30), (50, 45, 5), (5, 15, 1)], ids=str)
def test_gpa_weights_are_the_official_gaussian(epochs: int, mean: float, std: float) -> None:
    """The base-to-new, cross-dataset and both few-shot settings, and 5 epochs far below the mean."""
    np.testing.assert_allclose(gpa_weights(epochs, mean, std), official_gauss(epochs, mean, std), rtol=1e-9, atol=0)


def test_the_training_loss_equals_the_reference_at_the_start(backbone: Any, shapes: dict[str, Any]) -> None:
    """One batch of 6 images through fewclip's network in training mode: the mean of cross-entropy + penalty is
    ``forward_backward``'s loss, and its gradient with respect to every prompt is the reference's (1e-5 in
    fp32, through two towers and 60 templates)."""
    cfg = tiny_cfg()
    classes = shapes["classes"]
    net = PromptSRCNet(backbone, classes, ours(cfg), SEED)
    net.teacher_text = teacher_text_features(backbone, classes, list(IMAGENET_TEMPLATES))
    reference = PromptSRCReference(backbone.model, backbone.tokenizer, classes, cfg, net.prompts.state_dict())
    torch.testing.assert_close(net.prompts.ctx.detach(), reference.ctx.detach(), atol=0, rtol=0)  # a lookup
    torch.testing.assert_close(
        net.teacher_text, normalize(reference.fixed_embeddings), atol=1e-6, rtol=0
    )  # 60 templates x 3 names through the text tower
    picked = [0, 5, 11, 14, 20, 29]
    pixels, labels = pixels_of(backbone, shapes["train"])[picked], shapes["train"].labels[picked]
    net.train()
    output = net(pixels)
    assert isinstance(output, PenalizedLogits) and output.penalty.shape == (len(picked),)
    loss = (F.cross_entropy(output.logits, labels, reduction="none") + output.penalty).mean()
    expected = reference.loss(pixels, labels)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    assert float(output.penalty.detach().mean()) > 1e-4  # the prompts move the features: the terms are not zero
    ours_grads = torch.autograd.grad(loss, list(net.prompts.parameters()))
    theirs = torch.autograd.grad(expected, list(reference.named().values()))
    names = list(dict(net.prompts.named_parameters()))
    by_name = dict(zip(reference.named(), theirs))
    for name, grad in zip(names, ours_grads):
        torch.testing.assert_close(grad, by_name[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    "picked,accumulate",
    [(slice(None), 1), (slice(None), 2), ([0, 10, 20], 1)],
    ids=["30_images", "30_images_accumulate_2", "3_images"],
)
def test_training_and_gpa_equal_the_reference(
    backbone: Any, shapes: dict[str, Any], picked: Any, accumulate: int
) -> None:
    """Three epochs (warm-up, then the cosine) in batches of 4, GPA with mean 2, std 1 over the 3 epochs: of 30
    images the last partial batch of 2 is dropped (7 steps an epoch); 3 images, fewer than a batch, are one short
    batch. Every aggregated prompt within 1e-5 of the reference (fp32 rounding through two towers, up to 21 SGD
    steps). Two micro-batches of 2 train as the batch of 4: the penalty is per image."""
    cfg = tiny_cfg(LR=0.01, MAX_EPOCH=3, WARMUP_CONS_LR=1e-3)
    mine = ours(cfg, accumulate=accumulate)
    train, classes = shapes["train"], shapes["classes"]
    indices = list(range(len(train)))[picked] if isinstance(picked, slice) else picked
    train = ImageSet([train.paths[i] for i in indices], train.labels[indices])
    initial = {
        k: v.detach().clone() for k, v in PromptSRCNet(backbone, classes, mine, SEED).prompts.state_dict().items()
    }
    reference = PromptSRCReference(backbone.model, backbone.tokenizer, classes, cfg, initial)
    head = PromptSRCHead(mine).fit(Task(classes, ["a photo of a {}."], backbone, seed=SEED, shots=10), train)

    pixels, labels = pixels_of(backbone, train), train.labels
    t, optim = cfg.TRAINER.PROMPTSRC, dassl_optim(cfg)
    gauss = official_gauss(optim.max_epoch, t.GPA_MEAN, t.GPA_STD)
    previous_model_gpa: dict[str, torch.Tensor] = {}

    def forward_backward(optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
        loss = reference.loss(pixels[batch], labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def gpa(epoch: int) -> None:
        for name, value in reference.named().items():
            weighted = value.detach().clone() * float(gauss[epoch - 1])
            previous_model_gpa[name] = weighted + previous_model_gpa[name] if name in previous_model_gpa else weighted

    orders = [torch.tensor(epoch_order(SEED, epoch, len(train))) for epoch in range(optim.max_epoch)]
    dassl_train(list(reference.named().values()), optim, orders, forward_backward, after_epoch=gpa)
    last_epoch = {name: value.detach().clone() for name, value in reference.named().items()}

    learned = head.prompts_state_
    assert set(learned) == set(previous_model_gpa)
    for name, value in previous_model_gpa.items():
        torch.testing.assert_close(learned[name], value, atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    # the aggregate is not the last epoch's prompts (GPA is what is kept)
    assert any(not torch.allclose(learned[n], last_epoch[n], atol=1e-4) for n in learned)


def test_logits_equal_the_reference_with_the_learned_prompts(backbone: Any, shapes: dict[str, Any]) -> None:
    """The fitted head's logits on the test images and ``CustomCLIP.forward`` (eval) with the same learned
    tensors, within 1e-5."""
    cfg = tiny_cfg(LR=0.01, MAX_EPOCH=2)
    unit = Task(shapes["classes"], ["a photo of a {}."], backbone, seed=SEED, shots=10)
    head = PromptSRCHead(ours(cfg)).fit(unit, shapes["train"])
    pixels = pixels_of(backbone, shapes["test"])
    reference = PromptSRCReference(backbone.model, backbone.tokenizer, shapes["classes"], cfg, head.prompts_state_)
    with torch.no_grad():
        assert not torch.allclose(reference.ctx, head.prompts_state_["ctx"], atol=1e-4)  # the init words' moved
        reference.ctx.copy_(head.prompts_state_["ctx"])
        torch.testing.assert_close(head.image_logits(pixels), reference.forward(pixels), atol=1e-5, rtol=0)
