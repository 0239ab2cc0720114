"""GDA (Wang et al., ICLR 2024, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation"): Gaussian
discriminant analysis on the few-shot image features, one covariance shared by all classes, ensembled with
zero-shot CLIP. Training-free.

As mrflogs/ICLR24 ``main_few_shots.py`` ``run``: the support features, L2-normalised, are the samples; each class's
Gaussian is centred on its mean ``mu_c``; the shared precision is the reference's "KS estimator"
``P = d * pinv(S + tr(S / (N - 1)) I)``, with ``S`` the within-class scatter of all N samples (``(N - 1) *
center_vecs.T.cov()``); with uniform class priors the discriminant is linear, ``W_c = P mu_c``,
``b_c = log(1 / C) - mu_c P mu_c / 2``; ``logits = logit_scale * cos(x, t_c) + alpha * (x_n . W_c + b_c)``
with ``t_c`` the zero-shot ensemble (``utils.py`` ``clip_classifier``, as ``zero_shot``). alpha is the first
value of ``[1e-4, 1e-3, 0.01, 0.1, 1, 10, 100]`` with the best validation accuracy (a strict improvement over
the running best, which starts at 0 with alpha 0.1).

``estimator: pooled`` is ``main_base2new.py`` ``run``'s estimator for the base classes: ``pinv`` of the mean over
classes of each class's unbiased covariance. ``transfer`` (base-to-new) follows the same function: for each new
class, the ``transfer_neighbours`` (64) support samples most similar to its zero-shot prototype ``t`` and
``transfer_text_copies`` (16) copies of ``t`` are averaged into its mean; each new class's precision is the KS
estimator of those neighbours' scatter around ``t``; the new classes share the mean of these precisions and use
the alpha chosen on the base classes.

Where fewclip differs, and why:

- ``augment_views`` is 0 by default (the samples are the plain features): the reference's samples are
  ``augment_epoch`` = 10 augmented passes of the support set; set ``augment_views: 10`` for that (opt-in: 10
  encoder passes). With cached views, every view is a sample (the reference does not add the plain image).
  fewclip's views are random resized crops of scale 0.08-1 + flips, the reference's of scale 0.5-1. Without
  views a 1-shot support set has no within-class spread: the GDA logits are then a constant and the head is
  zero-shot.
- The search runs on fewclip's validation split. The reference searches on the dataset's full validation split,
  except for ImageNet, where ``main_few_shots.py`` and ``main_base2new.py`` set the validation features to the
  test features: it selects alpha on the test set there, which fewclip never does. Without a validation split
  (or with ``search: false``) alpha is the config's ``alpha``, 0.1, the reference's starting value.
- The zero-shot part uses the backbone's logit scale where the reference writes ``100.`` (CLIP's learned scale
  for the OpenAI weights, the right one for other backbones).
- The new classes' precision is scaled by the feature dimension ``d``; the reference writes ``512``, which is
  ``d`` for its ViT-B/16 and ViT-B/32 runs. With fewer than 64 support samples, all of them are the neighbours
  (the reference's ``topk`` would fail).
- The precision is computed in float64 (the reference: float32); the stored classifier is float32.
- ``calibrate`` (default true) temperature-scales the logits on val; the argmax, and so every accuracy, is the
  reference's. ``calibrate: false`` gives the reference's logits.
- The head keeps its support samples (N x d) to synthesise new classes' Gaussians in ``transfer``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from fewclip.backbones.protocol import Backbone
from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, HeadBase, Task, normalize
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.heads.prompts.lengths import ChecksTemplates, check_template_task
from fewclip.heads.registry import register_head
from fewclip.heads.on_features.support import class_sums, support_samples
from fewclip.training.calibration import TemperatureScaled, calibrate, temperature_tensor

ALPHA_GRID = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]  # main_few_shots.py run: the alphas searched on val
Estimator = Literal["ks", "pooled"]


class GdaConfig(ConfigBlock):
    """The `gda` block: the reference's few-shot settings (main_few_shots.py, configs/few_shots/*.yaml)."""

    alphas: list[float] = Field(
        default_factory=lambda: list(ALPHA_GRID),
        description="The ensemble weights searched "
        "on the validation split, in this order (the first best accuracy wins).",
    )
    alpha: float = Field(
        0.1, ge=0, description="Weight of the GDA logits when not searched (the reference's starting value)."
    )
    search: bool = Field(True, description="Search alpha on the validation split (never on test).")
    estimator: Estimator = Field(
        "ks",
        description="The shared precision: 'ks', d * pinv(S + tr(S/(N-1)) I) of the "
        "within-class scatter S of all N samples (main_few_shots.py); 'pooled', pinv of the "
        "mean of the classes' covariances (main_base2new.py's base classes; needs two "
        "samples per class).",
    )
    augment_views: int = Field(
        0,
        ge=0,
        description="Fit the Gaussians to N cached augmented views per support image "
        "(the paper uses 10); 0: the plain features.",
    )
    transfer_neighbours: int = Field(
        64,
        ge=2,
        description="New classes (transfer): support samples nearest to each "
        "new class's zero-shot prototype that estimate its Gaussian.",
    )
    transfer_text_copies: int = Field(
        16,
        ge=0,
        description="New classes (transfer): copies of the zero-shot "
        "prototype averaged with the neighbours into the class mean.",
    )
    calibrate: bool = Field(
        True, description="Temperature-scale the logits on the validation split (argmax unchanged)."
    )

    @field_validator("alphas")
    @classmethod
    def _alphas_are_weights(cls, alphas: list[float]) -> list[float]:
        if not alphas or any(a < 0 for a in alphas):
            raise ValueError(f"alphas must be a non-empty list of weights >= 0, got {alphas}")
        return alphas


def class_means(samples: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
    """(C, d) each class's mean sample; a class without a sample is an error naming it."""
    role = "every class's Gaussian is centred on its support images' mean"
    sums, counts = class_sums(samples, labels, class_names, "gda", role)
    return sums / counts[:, None]


def ks_precision(scatter: torch.Tensor, samples: int) -> torch.Tensor:
    """(d, d) the reference's KS estimator from a scatter matrix of ``samples`` rows: d * pinv(S + tr(S/(n-1)) I)."""
    dim = scatter.shape[0]
    shrink = scatter.trace() / (samples - 1) * torch.eye(dim, dtype=scatter.dtype)
    inverse: torch.Tensor = torch.linalg.pinv(scatter + shrink, hermitian=True)
    return dim * inverse


def shared_precision(
    samples: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, estimator: Estimator
) -> torch.Tensor:
    """(d, d) the precision every class's Gaussian shares (``GdaConfig.estimator``)."""
    if len(samples) < 2:
        raise ValueError("gda needs at least two support samples to estimate a covariance")
    centred = samples - means[labels]  # (N, d) each sample minus its class mean
    if estimator == "ks":
        centred = centred - centred.mean(dim=0)  # torch.cov's centring in the reference: zero up to rounding
        return ks_precision(centred.T @ centred, len(samples))
    counts = torch.bincount(labels, minlength=len(means))
    if int(counts.min()) < 2:
        raise ValueError(
            "gda: estimator 'pooled' needs at least two samples of every class (shots x augment_views) "
            "for the classes' covariances; use gda.estimator=ks or more augment_views"
        )
    per_sample = 1.0 / (counts[labels] - 1).to(samples.dtype)  # each class's unbiased covariance, then their mean
    pooled: torch.Tensor = torch.linalg.pinv((centred * per_sample[:, None]).T @ centred / len(means), hermitian=True)
    return pooled


def discriminant(means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear discriminant of Gaussians with a shared precision and uniform priors: (C, d) weights, (C,) biases."""
    weights = means @ precision  # precision is symmetric: row c is P mu_c
    bias = math.log(1.0 / len(means)) - (weights * means).sum(dim=-1) / 2
    return weights, bias


def synthesized_gaussians(
    support: torch.Tensor, prototypes: torch.Tensor, neighbours: int, text_copies: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C', d) means and the (d, d) shared precision of classes known only by their zero-shot ``prototypes``
    (C', d), from the base classes' normalised ``support`` samples (N, d) (main_base2new.py ``run``)."""
    k = min(neighbours, len(support))
    if k < 2:
        raise ValueError("gda: synthesising a new class's Gaussian needs at least two support samples")
    nearest = (prototypes @ support.T).topk(k, dim=-1).indices  # (C', k)
    precision = torch.zeros(support.shape[1], support.shape[1], dtype=support.dtype)
    means = []
    for prototype, rows in zip(prototypes, nearest):
        near = support[rows]  # (k, d)
        means.append((near.sum(dim=0) + text_copies * prototype) / (k + text_copies))
        offsets = near - prototype  # the scatter around the prototype, not around the mean
        precision += ks_precision(offsets.T @ offsets, k)
    return torch.stack(means), precision / len(prototypes)


def search_alpha(
    zero_shot: torch.Tensor, gda: torch.Tensor, labels: torch.Tensor, alphas: list[float]
) -> tuple[float | None, int]:
    """(the first alpha with the most correct predictions of ``zero_shot + alpha * gda``, that count); None when
    no alpha gets any right (the reference then keeps its starting value)."""
    correct = [int(((zero_shot + alpha * gda).argmax(dim=-1) == labels).sum()) for alpha in alphas]
    best = max(range(len(alphas)), key=lambda i: (correct[i], -i))
    return (alphas[best] if correct[best] > 0 else None), correct[best]


@register_head
class GdaHead(TemperatureScaled, ChecksTemplates, HeadBase):
    name = "gda"
    paper = "Wang et al., ICLR 2024 (GDA)"
    official_code = "mrflogs/ICLR24"
    paper_selection = "validation split"  # main_few_shots.py: alpha on val; ImageNet: test
    paper_selection_except = {"ImageNet": "test set (released code)"}
    config_key = "gda"
    Config = GdaConfig
    published_as = "GDA"
    validation_search = "GDA's ensemble weight alpha (the reference's grid of 7 values)"
    uses_shots = True
    transfers = True  # new classes' Gaussians are synthesised from the support samples near their text prototypes
    uses_augmented_views = True
    calibrates = True
    config: GdaConfig

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "GdaHead":
        samples, labels = support_samples(train, self.name, "its Gaussians are fitted to them")
        self.check(task)
        means = class_means(samples, labels, list(task.class_names))
        weights, bias = discriminant(means, shared_precision(samples, labels, means, self.config.estimator))
        zero_shot = ZeroShotHead().fit(Task(list(task.class_names), list(task.templates), task.backbone))
        self.prototypes_, self.logit_scale_ = zero_shot.prototypes_.float(), zero_shot.logit_scale_.float()
        self.weights_, self.bias_ = weights.float(), bias.float()
        self.support_ = samples.float()  # what transfer synthesises new classes from
        self.prompt_templates_ = list(task.templates)
        self.history_: list[dict[str, float]] = []  # training-free
        self.alpha_, self.search_note_ = self.choose_alpha(val)
        self.calibration_ = calibrate(self.config.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def choose_alpha(self, val: FeatureSet | None) -> tuple[float, str]:
        """(alpha, how it was chosen): searched on val, or the config's when search is off or there is no val."""
        cfg = self.config
        if not cfg.search:
            return cfg.alpha, "fixed (search: false)"
        if val is None or len(val) == 0:
            return cfg.alpha, "fixed: no validation split to search on"
        alpha, correct = search_alpha(
            self.zero_shot_logits(val.features), self.gda_logits(val.features), val.labels, cfg.alphas
        )
        if alpha is None:
            return cfg.alpha, f"fixed: no alpha classifies any of the {len(val)} val images correctly"
        return alpha, f"searched on {len(val)} val images: {correct} correct"

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) logit scale x cosine to the zero-shot prototypes."""
        return self.logit_scale_ * normalize(features.float()) @ self.prototypes_.T

    def gda_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) the Gaussian discriminant on the normalised features."""
        return normalize(features.float()) @ self.weights_.T + self.bias_

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) zero-shot + alpha * GDA logits, before temperature scaling."""
        return self.zero_shot_logits(features) + self.alpha_ * self.gda_logits(features)

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "GdaHead":
        """GDA for other class names (base-to-new): their Gaussians synthesised from the support samples nearest
        to their zero-shot prototypes; the same alpha and temperature."""
        task = Task(list(class_names), self.prompt_templates_, backbone)
        check_template_task(task, self.name)
        zero_shot = ZeroShotHead().fit(task)
        means, precision = synthesized_gaussians(
            self.support_.double(),
            zero_shot.prototypes_.double(),
            self.config.transfer_neighbours,
            self.config.transfer_text_copies,
        )
        weights, bias = discriminant(means, precision)
        head = GdaHead(self.config)
        head.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_")})
        head.prototypes_, head.logit_scale_ = zero_shot.prototypes_.float(), zero_shot.logit_scale_.float()
        head.weights_, head.bias_ = weights.float(), bias.float()
        return head

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "prototypes": self.prototypes_,
            "logit_scale": self.logit_scale_.reshape(1),
            "weights": self.weights_,
            "bias": self.bias_,
            "support": self.support_,
            "alpha": torch.tensor([self.alpha_], dtype=torch.float64),
            "temperature": self.temperature_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.prototypes_, self.logit_scale_ = tensors["prototypes"], tensors["logit_scale"].reshape(())
        self.weights_, self.bias_, self.support_ = tensors["weights"], tensors["bias"], tensors["support"]
        self.alpha_ = float(tensors["alpha"][0])
        self.temperature_ = tensors["temperature"].reshape(())
        self.prompt_templates_ = list(meta.get("templates", []))

    def trainable_parameters(self) -> int:
        return 0  # training-free: the Gaussians are estimated, alpha is searched
