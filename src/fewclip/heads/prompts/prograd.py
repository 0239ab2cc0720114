"""ProGrad (Zhu et al., ICCV 2023, "Prompt-aligned Gradient for Prompt Tuning"): CoOp whose cross-entropy
gradient is projected when it conflicts with the gradient of the KL toward zero-shot predictions.

Follows the released code, BeierZhu/Prompt-align (tested step for step in ``tests/reference/test_prograd.py``):

- the step (``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` ``prograd_backward_and_update``, ``ProGradLoss``
  in ``ProGrad.public/trainers/prograd.py``): g_kl = d KL / d ctx with KL the soft cross-entropy
  ``sum_c -p_zs,c log softmax(logits / T)_c * T^2`` averaged over the batch (p_zs: zero-shot CLIP's
  probabilities at temperature T, the teacher's gradient stopped); g_ce = d CE / d ctx; if
  cos(g_ce, g_kl) < 0 the update uses ``g_ce - lambda * (g_ce . g_kl_unit) g_kl_unit``, else g_ce;
- the initial context (``PromptLearner.__init__`` with CTX_INIT True, as every ProGrad config sets it, and
  ``N_CTX`` 16 from ``scripts/prograd.sh``): 16 vectors, zeros and then the token embeddings of the template's
  words in the last slots (``ctx_init_mode: zeros_then_words``), class token at the end;
- the defaults (``configs/trainers/ProGrad/rn50_ep50.yaml``, ``rn50_ep100.yaml``, ``rn50.yaml``;
  ``scripts/prograd.sh``; the README): SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32, LAMBDA 1.0,
  T 1.0, one warm-up epoch at a constant 1e-5 then Dassl's cosine stepped once per epoch, each epoch's last
  partial batch dropped, and 50 / 100 / 100 / 200 / 200 epochs at 1 / 2 / 4 / 8 / 16 shots (the README's
  rn50_ep50 / rn50_ep100 / rn50 per budget; base-to-new trains 4 shots with rn50_ep100, the same 100).

Deviations:

- precision: the reference trains the prompt learner in fp16 (``TRAINER.COOP.PREC`` defaults to "fp16" in
  ``ProGrad.public/train.py`` and no config changes it; its zero-shot teacher is fp32). fewclip trains in
  fp32 by default: the same computation without fp16's rounding of the context and its updates, and
  portable to CPUs; ``precision: fp16`` autocasts the text tower (the context stays fp32).
- the template: the reference takes both the initial words and the teacher's prompt from one dataset
  template (``CUSTOM_TEMPLATES`` in ``trainers/prograd.py``, its own, e.g. "a type of pet, a photo of a {}.";
  the words are the template without " {}."). fewclip's default ``ctx_init`` is "a photo of a", the
  reference's for ImageNet, SUN397, Caltech101 and StanfordCars, and its teacher is the zero-shot head on
  ``prompts.templates``; for another dataset give its template there and its words as ``ctx_init``.
- words of several tokens: the reference counts words (``len(ctx_init.split(" "))``) and copies that many
  tokens, so a template with punctuation ("pet," is two tokens) leaves its last tokens in the fixed part
  of the prompt after the context; fewclip refuses such a ``ctx_init`` before training instead.
- LAMBDA: the README trains Flowers102, DTD and EuroSAT at 8 and 16 shots with LAMBDA 0.8: set
  ``projection: {1: 1.0, 8: 0.8}`` there, as ``configs/coop_suite`` does.
- the history's ``train_loss`` is the cross-entropy (the reference logs it beside the KL).
- as CoOp's (``coop.py``): random draws from fewclip's seeded generators, cached features instead of
  fresh augmentation each epoch, and ``select`` / ``calibrate`` (``select: last`` keeps the last epoch, as
  the reference).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn

from fewclip.heads.base import Task, normalize
from fewclip.heads.prompts.coop import ContextParams, CoOpConfig, CoOpHead, CoOpPrompts
from fewclip.heads.prompts.config import CTX_INIT_MODE_HELP, CtxInitMode
from fewclip.heads.registry import register_head
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.training.schedule import EpochsByShots, for_shots


class ProGradConfig(CoOpConfig):
    """The `prograd` block: CoOp's keys with ProGrad's defaults, plus the projection strength and the KL
    temperature."""

    # n_ctx does not follow ctx_init here: a variant that changes the words keeps the context length
    derived_keys: ClassVar[dict[str, str]] = {}

    n_ctx: int = Field(
        16,
        ge=1,
        description="Learnable context tokens; with ctx_init, zeros then its words (ctx_init_mode: zeros_then_words).",
    )
    ctx_init: str | None = Field(
        "a photo of a",
        description="Words whose token embeddings start the last context "
        "slots (the reference: its dataset template without ' {}.').",
    )
    ctx_init_mode: CtxInitMode = Field("zeros_then_words", description=CTX_INIT_MODE_HELP)
    epochs: EpochsByShots = Field(
        default_factory=lambda: {1: 50, 2: 100, 4: 100, 8: 200, 16: 200},
        description="Epochs, or {shots: epochs} per shot budget.",
    )
    projection: float | dict[int, float] = Field(
        1.0,
        description="lambda: how much of the conflicting component is removed, >= 0; or {shots: lambda} per shot "
        "budget, e.g. {1: 1.0, 8: 0.8} (an unlisted budget takes the largest listed one below it; below the "
        "smallest, the smallest).",
    )
    temperature: float = Field(1.0, gt=0, description="T of the KL toward the zero-shot predictions.")

    @field_validator("projection")
    @classmethod
    def _projection_at_least_zero(cls, projection: float | dict[int, float]) -> float | dict[int, float]:
        pairs = projection.items() if isinstance(projection, dict) else [(1, projection)]
        if not pairs or any(shots < 1 or strength < 0 for shots, strength in pairs):
            raise ValueError(f"projection must be >= 0, or a non-empty mapping {{shots >= 1: >= 0}}, got {projection}")
        return projection

    def projection_for(self, shots: int) -> float:
        """lambda at a shot budget: the one value, or ``for_shots`` of {shots: lambda}."""
        projection = self.projection
        return for_shots(projection, shots) if isinstance(projection, dict) else projection


def project_conflict(ce_grad: torch.Tensor, kl_grad: torch.Tensor, strength: float) -> torch.Tensor:
    """ce_grad, minus ``strength`` times its component along kl_grad when the two point apart (cos < 0)."""
    kl_unit = kl_grad / torch.linalg.norm(kl_grad)
    ce_unit = ce_grad / torch.linalg.norm(ce_grad)
    if torch.dot(ce_unit.flatten(), kl_unit.flatten()) < 0:
        projected: torch.Tensor = ce_grad - strength * torch.dot(ce_grad.flatten(), kl_unit.flatten()) * kl_unit
        return projected
    return ce_grad


@register_head
class ProGradHead(CoOpHead):
    name = "prograd"
    paper = "Zhu et al., ICCV 2023 (ProGrad)"
    official_code = "BeierZhu/Prompt-align"
    published_as = "ProGrad"
    paper_selection = "validation-free"  # Dassl's last epoch (TEST.FINAL_MODEL), fixed lambda
    config_key = "prograd"
    Config = ProGradConfig

    def train_step(
        self, task: Task, prompts: CoOpPrompts, params: ContextParams, scale: float
    ) -> Callable[[torch.Tensor, torch.Tensor], float]:
        teacher = ZeroShotHead().fit(Task(list(task.class_names), list(task.templates), task.backbone))
        t, strength = self.config.temperature, self.config.projection_for(task.shots)

        def step(features: torch.Tensor, labels: torch.Tensor) -> float:
            logits = (scale * normalize(features) @ prompts.features(params.ctx).T).float()
            teacher_prob = torch.softmax(teacher.logits(features) / t, dim=-1)
            kl = (-teacher_prob * torch.log_softmax(logits / t, dim=-1) * t * t).sum(dim=1).mean()
            ce = nn.functional.cross_entropy(logits, labels)
            (kl_grad,) = torch.autograd.grad(kl, params.ctx, retain_graph=True)
            (ce_grad,) = torch.autograd.grad(ce, params.ctx)
            params.ctx.grad = project_conflict(ce_grad, kl_grad, strength)
            return ce.item()

        return step
