"""PromptSRC (Khattak et al., ICCV 2023, "Self-regulating Prompts: Foundational Model Adaptation without
Forgetting"): independent deep prompts in both towers (IVLP: text prompts in the first ``text_depth`` text
layers, vision prompts in the first ``vision_depth`` vision layers, no function between them), trained with
cross-entropy plus three terms that hold the prompted model near frozen CLIP, and kept as a Gaussian-weighted
sum of the prompts every epoch ends with (GPA). The learned tensors: ``IVLPPrompts``; the network and the head's
life after training (attach, transfer, scoring, saving) are MaPLe's (``deep_prompts``), as are the towers'
prompt hooks (``Backbone.deep_prompt_towers``, the ``deep_prompts`` capability).

What follows the reference code (github.com/muzairkhattak/PromptSRC, trained through Dassl.pytorch; checked
step by step against an independent re-implementation in ``tests/reference/test_promptsrc.py``):

- the base-to-new defaults (``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``): 4 text and 4
  vision prompt tokens, both depths 9, the text context from "a photo of a" (``trainers/promptsrc.py``
  ``VLPromptLearner``: the prompt is "a photo of a {name}." with its first ``n_ctx_text`` tokens after SOS
  learned); the deep text prompts, the shallow vision prompts and the deep vision prompts drawn from N(0, 0.02)
  (``clip/model.py`` ``ResidualAttentionBlock_IVLP``, ``VisionTransformer``: the shallow vision prompts
  appended after the position embeddings, before ``ln_pre``; the deep ones replace the last tokens, or the text
  rows 1..n_ctx, before layers 1..depth-1); SGD lr 0.0025, 20 epochs, batch 4, one warm-up epoch at 1e-5, then
  Dassl's per-epoch cosine (``encoder_schedule``), momentum 0.9, weight decay 5e-4, drop_last;
- the loss (``CustomCLIP.forward``, ``PromptSRC.forward_backward``): cross-entropy of the prompted logits plus
  ``25 * L1(prompted class text features, frozen ones)`` (the frozen ones: frozen CLIP's unnormalised text
  features of the class names in 60 ImageNet templates, ``trainers/imagenet_templates.py``, averaged, then
  normalised), ``10 * L1(prompted image features, frozen image features)`` (both normalised; ``F.l1_loss``'s
  mean over every element) and ``KL(frozen logits || prompted logits)`` summed over the batch and divided by
  the logits' element count (``F.kl_div(..., reduction='sum', log_target=True) / logits.numel()``), the frozen
  logits being frozen image features against the frozen text features at CLIP's logit scale;
- GPA (``PromptSRC.build_model``'s ``get_gauss``, ``forward_backward``'s ``state_dict_weighting`` and
  ``state_dict_add``): epoch e's weights, as its last step left them, enter with weight N(e; 15, 1)
  normalised over epochs 1..20; the sum is what is evaluated (``TrainPlan.epoch_weights``).

Where fewclip differs, and why:

- precision: the reference trains in fp16 (``PREC: "fp16"``); fp32 here by default, which runs anywhere, CPU
  included (``precision: bf16`` / ``fp16`` autocast on a GPU).
- GPA sums the learned tensors; the reference weights and sums its whole state dict, frozen CLIP included,
  in half precision (the weights sum to 1, so the frozen weights come back but for fp16 rounding). The weights
  are a softmax of the Gaussian's log-density, the same numbers, which never underflow to 0 / 0 when
  ``epochs`` lies far from ``gpa_mean``.
- the regularisers enter as a penalty per image (``PenalizedLogits``), whose mean over a step's images is the
  reference's loss exactly, so micro-batches (``accumulate``) and torchrun ranks train as one batch.
- ``ctx_init``: the reference ignores it when ``N_CTX_TEXT > 4`` (a random context after "X" placeholders);
  here it initialises the context whenever it is given (and must be at least ``n_ctx_text`` tokens), as maple.
  ``teacher_templates: run`` takes the run's ``prompts.templates`` instead of the 60 ImageNet ones.
- no ``select``: the GPA sum is kept whatever the validation split says; each epoch's own weights are still
  validated, into ``history_``.
- the batch order, the crops and the initial random tensors are drawn from fewclip's seeded generators.

Its cross-dataset setting (ImageNet source) is depth 3 in both towers, GPA mean 6, std 10; its few-shot
setting 50 epochs with GPA mean 30, std 30 (45, 5 for Cars, Flowers, Aircraft, DTD, EuroSAT); ``configs/coop_suite``
sets both.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fewclip.backbones.protocol import Backbone, DeepPromptTowers
from fewclip.heads.base import ImageSet, Task, normalize
from fewclip.heads.encoders.config import DasslTrainingConfig
from fewclip.heads.encoders.deep_prompts import DeepPromptHead, DeepPromptNet, DeepPrompts, prompt_token_ids
from fewclip.heads.prompts.clip_templates import IMAGENET_TEMPLATES
from fewclip.heads.prompts.lengths import check_templates_fit
from fewclip.heads.registry import register_head
from fewclip.training.images_loop import PenalizedLogits


class PromptSRCConfig(DasslTrainingConfig):
    """The `promptsrc` block, with the reference PromptSRC defaults (base-to-new, ViT-B/16)."""

    n_ctx_text: int = Field(4, ge=1, description="Learned text context tokens (and deep text prompt tokens).")
    n_ctx_vision: int = Field(4, ge=1, description="Learned vision prompt tokens per prompted vision layer.")
    ctx_init: str | None = Field(
        "a photo of a",
        description="The prompt's words before the class name; its first n_ctx_text tokens initialise the "
        "context and train, the rest stay fixed. null: context vectors drawn from N(0, 0.02).",
    )
    text_depth: int = Field(
        9, ge=1, description="Text prompt depth: the context enters layer 0, deep prompts layers 1..depth-1."
    )
    vision_depth: int = Field(
        9,
        ge=0,
        description="Vision prompt depth: prompts appended before layer 0 and replaced before layers "
        "1..depth-1 (0: no vision prompts, the image tower stays frozen).",
    )
    text_loss_weight: float = Field(
        25.0, ge=0, description="Weight of the L1 distance of the class text features to frozen CLIP's."
    )
    image_loss_weight: float = Field(
        10.0, ge=0, description="Weight of the L1 distance of the image features to frozen CLIP's."
    )
    gpa_mean: float = Field(15.0, description="GPA: the mean (in epochs, 1-based) of the Gaussian weighting epochs.")
    gpa_std: float = Field(1.0, gt=0, description="GPA: the Gaussian's standard deviation, in epochs.")
    teacher_templates: Literal["imagenet", "run"] = Field(
        "imagenet",
        description="Frozen CLIP's text features: the mean over the 60 ImageNet templates of the reference "
        "(imagenet) or over the run's prompts.templates (run).",
    )
    lr: float = Field(0.0025, gt=0, description="SGD learning rate after the warm-up (cosine over all epochs).")
    epochs: int = Field(20, ge=1, description="Epochs over the training images.")


class IVLPPrompts(DeepPrompts):
    """Independent vision-language prompts: ``ctx`` and ``deep_text`` (text_depth - 1 of (n_ctx, text width)),
    ``vision_ctx`` (n_ctx_vision, vision width; absent at vision depth 0) and ``deep_vision`` (vision_depth - 1
    of them), all but ``ctx`` drawn from N(0, 0.02)."""

    vision_ctx: nn.Parameter | None

    def __init__(
        self, ctx: torch.Tensor, text_depth: int, n_ctx_vision: int, vision_depth: int, vision_width: int
    ) -> None:
        super().__init__()
        n_ctx, width = ctx.shape
        self.ctx = nn.Parameter(ctx.clone())
        self.deep_text = nn.ParameterList(
            [nn.Parameter(torch.randn(n_ctx, width) * 0.02) for _ in range(text_depth - 1)]
        )
        self.vision_ctx = nn.Parameter(torch.randn(n_ctx_vision, vision_width) * 0.02) if vision_depth else None
        self.deep_vision = nn.ParameterList(
            [nn.Parameter(torch.randn(n_ctx_vision, vision_width) * 0.02) for _ in range(max(vision_depth - 1, 0))]
        )

    def vision(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        return self.vision_ctx, list(self.deep_vision)


def gpa_weights(epochs: int, mean: float, std: float) -> tuple[float, ...]:
    """Epoch e's weight (e = 1..epochs): the Gaussian N(e; mean, std) over its sum over the epochs, as a softmax
    of the log-densities (the normalising constant cancels)."""
    log_density = torch.tensor([-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)], dtype=torch.float64)
    return tuple(float(w) for w in torch.softmax(log_density, dim=0))


def consistency_penalty(
    text: torch.Tensor,
    frozen_text: torch.Tensor,
    image: torch.Tensor,
    frozen_image: torch.Tensor,
    logits: torch.Tensor,
    frozen_logits: torch.Tensor,
    text_weight: float,
    image_weight: float,
) -> torch.Tensor:
    """(n,) per-image penalties whose mean over the n images is PromptSRC's three terms: ``text_weight`` times the
    mean |text - frozen_text| over (C, dim), ``image_weight`` times the mean |image - frozen_image| over (n, dim),
    and KL(frozen || prompted) of the logits' softmax summed over the batch over n * C."""
    text_term = text_weight * (text - frozen_text).abs().mean()
    image_term = image_weight * (image - frozen_image).abs().mean(dim=1)
    log_p, log_q = logits.log_softmax(dim=1), frozen_logits.log_softmax(dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=1) / logits.shape[1]
    return text_term + image_term + kl


def teacher_text_features(backbone: Backbone, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """(C, dim) frozen CLIP's class text features: the unnormalised features of every template averaged, then
    normalised (as ``VLPromptLearner`` builds ``fixed_embeddings`` and ``CustomCLIP.forward`` normalises them)."""
    texts = [template.format(name) for template in templates for name in class_names]
    features = backbone.encode_text(texts).reshape(len(templates), len(class_names), -1)  # (T, C, dim)
    return normalize(features.mean(dim=0))


class PromptSRCNet(DeepPromptNet):
    """Frozen CLIP + independent deep prompts (pixels -> logits). In training, with ``teacher_text`` set, the
    forward also runs the frozen image tower and returns ``PenalizedLogits`` (the consistency terms)."""

    def __init__(self, backbone: Backbone, class_names: list[str], config: PromptSRCConfig, seed: int) -> None:
        def make_prompts(ctx: torch.Tensor, towers: DeepPromptTowers) -> IVLPPrompts:
            return IVLPPrompts(ctx, config.text_depth, config.n_ctx_vision, config.vision_depth, towers.vision_width)

        super().__init__(
            backbone,
            class_names,
            config.n_ctx_text,
            config.ctx_init,
            seed,
            config.gradient_checkpointing,
            make_prompts,
            "promptsrc.n_ctx_text",
        )
        self.text_weight, self.image_weight = config.text_loss_weight, config.image_loss_weight
        self.teacher_text: torch.Tensor | None = None  # (C, dim) normalised, on the device; set for training

    def forward(self, pixels: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor | PenalizedLogits:
        if not self.training or self.teacher_text is None:
            logits: torch.Tensor = super().forward(pixels, text)
            return logits
        text = self.class_text_features()
        image = self.image_features(pixels)
        logits = self.logit_scale * image @ text.T
        with torch.no_grad():  # frozen CLIP: the image tower without prompts
            frozen_image = normalize(self.towers.image_features(pixels, None, [], False).float())
            frozen_logits = self.logit_scale * frozen_image @ self.teacher_text.T
        penalty = consistency_penalty(
            text, self.teacher_text, image, frozen_image, logits, frozen_logits, self.text_weight, self.image_weight
        )
        return PenalizedLogits(logits, penalty)


@register_head
class PromptSRCHead(DeepPromptHead):
    name = "promptsrc"
    paper = "Khattak et al., ICCV 2023 (PromptSRC)"
    official_code = "muzairkhattak/PromptSRC"
    config_key = "promptsrc"
    Config = PromptSRCConfig
    published_as = "PromptSRC"
    paper_selection = "validation-free"  # PromptSRC.forward_backward: the GPA sum of all epochs, fixed settings
    selects_epoch = False  # GPA: the weighted sum of the epochs is kept, no epoch is chosen
    needs_advice = {"vision_prompts": "set promptsrc.vision_depth: 0 (text prompts only)"}
    config: PromptSRCConfig

    @classmethod
    def needs_for(cls, config: PromptSRCConfig) -> frozenset[str]:
        """Deep prompts; with a vision depth, prompts in the image tower too."""
        return cls.needs | ({"vision_prompts"} if config.vision_depth else set())

    def teacher_templates(self, task: Task) -> list[str]:
        return list(IMAGENET_TEMPLATES) if self.config.teacher_templates == "imagenet" else list(task.templates)

    def check(self, task: Task) -> None:
        """Fail before any training: a backbone without deep prompts, depths beyond the towers, prompts (the
        learned ones and frozen CLIP's templates) that do not fit."""
        backbone, towers = self.prompt_towers(task)
        cfg = self.config
        if cfg.vision_depth and not towers.vision_layers:
            raise ValueError(
                f"promptsrc.vision_depth: vision prompts need a ViT image tower read at its class token; this "
                f"{backbone.config.library} model's image tower takes none: set promptsrc.vision_depth: 0 "
                "(text prompts only) or choose a ViT model"
            )
        for key, depth, layers in (
            ("text_depth", cfg.text_depth, towers.text_layers),
            ("vision_depth", cfg.vision_depth, towers.vision_layers),
        ):
            if depth > layers:
                raise ValueError(
                    f"promptsrc.{key} {depth} exceeds the model's {layers} layers; set promptsrc.{key} to at "
                    f"most {layers}"
                )
        prompt_token_ids(
            backbone.tokens,
            task.class_names,
            cfg.n_ctx_text,
            cfg.ctx_init,
            backbone.max_text_positions,
            "promptsrc.n_ctx_text",
        )
        try:
            check_templates_fit(
                backbone.tokens,
                self.teacher_templates(task),
                task.class_names,
                backbone.max_text_positions,
                "promptsrc",
            )
        except ValueError as err:
            if cfg.teacher_templates != "imagenet":
                raise
            raise ValueError(
                f"{err}\nThese are frozen CLIP's 60 ImageNet templates (promptsrc.teacher_templates: imagenet); "
                "promptsrc.teacher_templates: run takes the run's prompts.templates instead."
            ) from err

    def build_net(self, backbone: Backbone, class_names: list[str], seed: int) -> PromptSRCNet:
        return PromptSRCNet(backbone, class_names, self.config, seed)

    def fit(self, task: Task, train: ImageSet | None = None, val: ImageSet | None = None) -> "PromptSRCHead":
        backbone, images = self.prepare_fit(task, train)
        cfg, net = self.config, self.net_
        assert isinstance(net, PromptSRCNet)
        teacher = teacher_text_features(backbone, task.class_names, self.teacher_templates(task))
        net.teacher_text = teacher.to(self.device_)
        plan = cfg.dassl_plan(len(images), epoch_weights=gpa_weights(cfg.epochs, cfg.gpa_mean, cfg.gpa_std))
        self.train_net(net, task, backbone, images, val, plan)
        net.teacher_text = None  # only training uses it
        self._finish()
        return self
