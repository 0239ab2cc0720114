"""MaPLe (Khattak et al., CVPR 2023, "MaPLe: Multi-modal Prompt Learning"): learned prompts in the first
``depth`` layers of both towers, the vision prompts projected from the text prompts (the coupling), trained end
to end on augmented images with CLIP frozen. The learned tensors: ``maple_prompts``; how they enter the towers
is the backbone's (``Backbone.deep_prompt_towers``, the ``deep_prompts`` capability: ``backbones.hf_deep_prompts``
for a Hugging Face CLIP, ``backbones.open_clip_towers`` for OpenCLIP, whose vision prompts need a ViT; a library
without it is refused when the config is loaded). The saved head holds only the learned tensors (+ the logit
scale); ``attach`` rebuilds the prompted towers on the run's backbone, and ``transfer`` scores other class names
with the same prompts (base-to-new): the network and the head's life after training are ``deep_prompts``',
shared with promptsrc.

What follows the reference code (github.com/muzairkhattak/multimodal-prompt-learning, trained through
Dassl.pytorch; checked step by step against an independent re-implementation in
``tests/reference/test_maple.py``):

- the base-to-new setting's defaults (``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``): 2 context
  tokens initialised from the first tokens of "a photo of a" (the prompt is "a photo of a {name}." with its
  first ``n_ctx`` tokens after SOS learned, the rest fixed: ``trainers/maple.py``
  ``MultiModalPromptLearner``), prompt depth 9, deep text prompts drawn from N(0, 0.02), the projections with
  torch's default Linear init, the deep ones all starting equal (``_get_clones``); batch 4, 5 epochs;
- the prompted towers (``clip/model.py`` ``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``) and the
  loss (``CustomCLIP.forward``: the model's ``logit_scale.exp()`` times the cosine, mean cross-entropy), the
  class texts re-encoded at every step;
- Dassl's training: SGD lr 0.0035, momentum 0.9, weight decay 5e-4 (``dassl/config/defaults.py``), one
  warm-up epoch at a constant 1e-5, then a cosine over the 5 epochs with the rate set once per epoch
  (``build_lr_scheduler``, stepped after an epoch's last batch: ``encoder_schedule``); the train loader drops
  an epoch's last partial batch when there are at least ``batch_size`` images (``drop_last``,
  ``dassl/data/data_manager.py`` ``build_data_loader``); random resized crop + flip; the last epoch's prompts.

Where it deviates, and why:

- precision: the reference trains in fp16 (``PREC: "fp16"``: CLIP, the context and the shallow projection,
  which it casts with ``self.proj.half()``, in half precision, and SGD steps on them so); the default here is
  fp32, which runs anywhere, CPU included (``precision: bf16`` / ``fp16`` autocast on a GPU).
- widths: the reference hard-codes ViT-B/16's 512 (text) and 768 (vision) for the deep prompts and the
  projections; here they are the model's own widths (the same on ViT-B/16). ViT-B/16: 3,555,072 trained
  parameters, as the reference.
- ``ctx_init``: the reference ignores it when ``N_CTX > 4`` (a random context after "X" placeholders); here it
  initialises the context whenever it is given (and must be at least ``n_ctx`` tokens), so a setting is never
  silently dropped. ``ctx_init: null`` is the random context.
- the kept epoch: ``select`` (default ``auto``: the last epoch unless a validation split of at least 10 images
  a class shows an earlier one clearly better); the reference tests the last epoch.
- the batch order, the crops and the initial random tensors are drawn from fewclip's seeded generators
  (resumable, identical whatever the number of workers or ranks), not in the reference's order from torch's
  global RNG.

Its cross-dataset setting (ImageNet source, ``vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml``) is lr 0.0026, 2
epochs, depth 3 (``configs/coop_suite/imagenet.yaml`` and ``imagenet_xd.yaml`` set it).
"""

from __future__ import annotations

import torch
from pydantic import Field

from fewclip.backbones.protocol import Backbone, DeepPromptTowers
from fewclip.heads.base import ImageSet, Task
from fewclip.heads.encoders.config import DasslTrainingConfig
from fewclip.heads.encoders.deep_prompts import DeepPromptHead, DeepPromptNet, prompt_token_ids
from fewclip.heads.encoders.maple_prompts import MaplePrompts
from fewclip.heads.registry import register_head
from fewclip.training.selection import SELECT_HELP, SelectRule


class MapleConfig(DasslTrainingConfig):
    """The `maple` block, with the reference MaPLe defaults (base-to-new, ViT-B/16)."""

    depth: int = Field(
        9,
        ge=1,
        description="Prompt depth J: prompts enter layer 0 and replace the previous ones "
        "before layers 1..J-1 of both towers (at most the towers' layer count).",
    )
    n_ctx: int = Field(2, ge=1, description="Learned context tokens (text) and vision prompt tokens per layer.")
    ctx_init: str | None = Field(
        "a photo of a",
        description="The prompt's words before the class name; its first "
        "n_ctx tokens initialise the context and train, the rest stay fixed. null: n_ctx "
        "context vectors drawn from N(0, 0.02) before the name.",
    )
    coupling: bool = Field(
        True,
        description="Vision prompts projected from the text prompts (Linear text width -> "
        "vision width per layer); false: no vision prompts, the image tower stays frozen.",
    )
    lr: float = Field(0.0035, gt=0, description="SGD learning rate after the warm-up (cosine over all epochs).")
    epochs: int = Field(5, ge=1, description="Epochs over the training images.")
    select: SelectRule = Field("auto", description=SELECT_HELP)


class MapleNet(DeepPromptNet):
    """Frozen CLIP + MaPLe prompts (``MaplePrompts``) as a module (pixels -> logits)."""

    def __init__(self, backbone: Backbone, class_names: list[str], config: MapleConfig, seed: int) -> None:
        def make_prompts(ctx: torch.Tensor, towers: DeepPromptTowers) -> MaplePrompts:
            return MaplePrompts(ctx, config.depth, config.coupling, towers.vision_width)

        super().__init__(
            backbone,
            class_names,
            config.n_ctx,
            config.ctx_init,
            seed,
            config.gradient_checkpointing,
            make_prompts,
            "maple.n_ctx",
        )


@register_head
class MapleHead(DeepPromptHead):
    name = "maple"
    paper = "Khattak et al., CVPR 2023 (MaPLe)"
    official_code = "muzairkhattak/multimodal-prompt-learning"
    paper_selection = "validation-free"  # Dassl's last epoch, fixed hyper-parameters (scripts/maple/*.sh)
    config_key = "maple"
    Config = MapleConfig
    published_as = "MaPLe"
    needs_advice = {"vision_prompts": "set maple.coupling: false (deep text prompts only)"}
    config: MapleConfig

    @classmethod
    def needs_for(cls, config: MapleConfig) -> frozenset[str]:
        """Deep prompts; with ``coupling``, prompts in the image tower too."""
        return cls.needs | ({"vision_prompts"} if config.coupling else set())

    def check(self, task: Task) -> None:
        """Fail before any training: a backbone without deep prompts, a depth beyond the towers, prompts that do
        not fit."""
        backbone, towers = self.prompt_towers(task)
        cfg = self.config
        text_layers, vision_layers = towers.text_layers, towers.vision_layers
        if cfg.coupling and not vision_layers:
            raise ValueError(
                f"maple.coupling: vision prompts need a ViT image tower read at its class token; this "
                f"{backbone.config.library} model's image tower takes none: set maple.coupling: false "
                "(deep text prompts only) or choose a ViT model"
            )
        layers = min(text_layers, vision_layers) if cfg.coupling else text_layers
        if cfg.depth > layers:
            raise ValueError(
                f"maple.depth {cfg.depth} exceeds the model's {layers} layers "
                f"(text {text_layers}, vision {vision_layers}); set maple.depth to at most {layers}"
            )
        prompt_token_ids(
            backbone.tokens, task.class_names, cfg.n_ctx, cfg.ctx_init, backbone.max_text_positions, "maple.n_ctx"
        )

    def build_net(self, backbone: Backbone, class_names: list[str], seed: int) -> MapleNet:
        return MapleNet(backbone, class_names, self.config, seed)

    def fit(self, task: Task, train: ImageSet | None = None, val: ImageSet | None = None) -> "MapleHead":
        backbone, images = self.prepare_fit(task, train)
        self.train_net(
            self.net_, task, backbone, images, val, self.config.dassl_plan(len(images), select=self.config.select)
        )
        self._finish()
        return self
