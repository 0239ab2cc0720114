"""LP++ (Huang et al., CVPR 2024, "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP"): a linear probe
whose class weights are visual prototypes plus a learnable per-class blend of the zero-shot text weights, trained
by full-batch gradient descent with step sizes computed from the data (no learning-rate search).

As FereshteShakeri/FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py`` ``LinearProbe_P2.forward`` (with
``main.py``, ``configs/base.yaml`` and ``methods/utils.py``): the samples ``f`` are the L2-normalised support
features; ``logits = f W^T + b + alpha_c * (f . t_c)``, with ``t_c`` the zero-shot ensemble (``utils.py``
``clip_classifier``, as ``zero_shot``) and no logit scale. ``W`` starts at each class's *sum* of samples
(``compute_centroids``: the division by the count is commented out), ``b`` at ``nn.Linear``'s default,
uniform(-1/sqrt(d), 1/sqrt(d)); every ``alpha_c`` starts at ``calculate_init_alpha``'s 250 x the mean over
classes of the class's mean cosine to its own text weight. The step sizes are ``calculate_lr_w``'s
``4 N / lambda_max(F^T F)`` for ``W`` and ``b`` (SGD, momentum 0.9) and ``calculate_lr_alpha``'s
``N / (4 max_c sum_i (f_i . t_c)^2)`` for alpha. 300 iterations (``train_epoch``) on the whole support set, each
one cross-entropy step of ``W`` and ``b``; every 10th also steps alpha by ``-lr_alpha * alpha.grad``, where, as
in the official file, alpha's gradient is never zeroed: it is the sum of every iteration's gradient so far. After
each iteration the official code scores its few-shot validation set and reports the test accuracy of the last
iteration whose val accuracy is ``>=`` the best so far: ``select: val_accuracy`` keeps that iteration.

It does not transfer to new class names: the visual prototypes and the blend are one per training class, and the
paper evaluates few-shot classification and domain generalisation (ImageNet to its variants), not base-to-new.

Where fewclip differs, and why:

- The official code trains on one augmented view of each support image (``main.py``'s ``train_tranform``:
  RandomResizedCrop of scale 0.5-1 + flip), extracted once: ``augment_views: 1`` (the default) is that, with
  fewclip's cached views (RandomResizedCrop of scale 0.08-1 + flip). With N views every view is a sample (the
  step sizes and prototypes then see N x the samples); ``augment_views: 0`` trains on the plain features.
- The iteration is chosen on fewclip's validation split (the official: a few-shot val set of as many images
  per class as the shots). Without a validation split the last iteration is kept; ``select: auto`` is fewclip's
  guarded rule instead.
- Training runs in float64 (the official: the CLIP model's dtype, fp16 on GPU); the stored weights are float32.
  ``lambda_max`` comes from ``torch.linalg.eigvalsh`` (the official: scipy's ``eigh``). The bias draws from a
  generator seeded with the unit's seed (the official: the global torch stream).
- ``calibrate`` (default true) temperature-scales the logits on val; the argmax, and so every accuracy, is the
  official code's. ``calibrate: false`` gives its logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import nn

from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, HeadBase, Task, check_loss, normalize
from fewclip.heads.on_features.support import class_sums, support_samples
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.heads.prompts.lengths import ChecksTemplates
from fewclip.heads.registry import register_head
from fewclip.training.calibration import TemperatureScaled, calibrate, temperature_tensor
from fewclip.training.selection import SELECT_HELP, BestEpoch, SelectRule, validation_scores


class LpPpConfig(ConfigBlock):
    """The `lp_pp` block: the official few-shot settings (configs/base.yaml, methods/linear_probe_p2.py)."""

    epochs: int = Field(300, ge=1, description="Full-batch iterations (the official train_epoch).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the visual weights and biases.")
    alpha_every: int = Field(10, ge=1, description="Step the text blend alpha every this many iterations.")
    alpha_init_scale: float = Field(
        250.0,
        description="alpha starts at this x the mean over classes of the class's mean cosine to its own "
        "text weight (calculate_init_alpha's 250).",
    )
    augment_views: int = Field(
        1,
        ge=0,
        description="Train on N cached augmented views per support image, each a sample (the official code: "
        "one augmented view); 0: the plain features.",
    )
    select: SelectRule = Field(
        "val_accuracy", description=SELECT_HELP + " The official code keeps the latest best val accuracy."
    )
    calibrate: bool = Field(
        True, description="Temperature-scale the logits on the validation split (argmax unchanged)."
    )


class BlendedClassifier(nn.Module):
    """``f W^T + b + alpha * (f T^T)`` on L2-normalised features ``f``: visual weights W (C, d), biases b (C,), the
    per-class text blend alpha (C,) and the frozen zero-shot text weights T (C, d)."""

    text: torch.Tensor  # a buffer, typed (``register_buffer`` leaves it ``Tensor | Module`` to mypy)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())
        self.alpha = nn.Parameter(alpha.clone())
        self.register_buffer("text", text)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        samples = normalize(features)
        return samples @ self.weight.T + self.bias + self.alpha * (samples @ self.text.T)


def initial_alpha(text_logits: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """The official start of every alpha_c: ``scale`` x the mean over classes of each class's mean cosine to its
    own text weight (``text_logits`` (N, C) = f . t)."""
    n_classes = text_logits.shape[1]
    own = text_logits.gather(1, labels[:, None]).squeeze(1)  # (N,) f_i . t_{y_i}
    counts = torch.bincount(labels, minlength=n_classes).to(own.dtype)
    per_class = torch.zeros(n_classes, dtype=own.dtype).index_add_(0, labels, own) / counts
    return scale * per_class.mean() * torch.ones(n_classes, dtype=own.dtype)


def weight_step(samples: torch.Tensor) -> float:
    """``calculate_lr_w``: 4 N / the largest eigenvalue of F^T F."""
    return 4 * len(samples) / float(torch.linalg.eigvalsh(samples.T @ samples).max())


def alpha_step(text_logits: torch.Tensor) -> float:
    """``calculate_lr_alpha``: N / (4 x the largest per-class sum of squared text cosines)."""
    return len(text_logits) / (4 * float(text_logits.pow(2).sum(dim=0).max()))


def blend_state(model: BlendedClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@register_head
class LpPpHead(TemperatureScaled, ChecksTemplates, HeadBase):
    name = "lp_pp"
    paper = "Huang et al., CVPR 2024 (LP++)"
    official_code = "FereshteShakeri/FewShot-CLIP-Strong-Baseline"
    paper_selection = "few-shot validation"  # official: the latest best-val iteration, val = `shots` images a class
    config_key = "lp_pp"
    Config = LpPpConfig
    published_as = "LP++"
    validation_search = "the iteration (the latest best val accuracy of its 300, as the official code)"
    uses_shots = True
    transfers = False  # visual prototypes and blends are one per training class
    uses_augmented_views = True
    selects_epoch = True
    calibrates = True
    config: LpPpConfig
    best_epoch_: int | None  # None: loaded from a file saved without it

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "LpPpHead":
        samples, labels = support_samples(train, self.name, "its prototypes are their sums")
        self.check(task)
        text = ZeroShotHead().fit(Task(list(task.class_names), list(task.templates), task.backbone)).prototypes_
        model = self.initial_model(samples, labels, text.double(), list(task.class_names), task.seed)
        self.descend(model, samples, labels, val, task)
        self.weight_, self.bias_ = model.weight.detach().float(), model.bias.detach().float()
        self.alpha_, self.text_ = model.alpha.detach().float(), text.float()
        self.calibration_ = calibrate(self.config.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def initial_model(
        self, samples: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, class_names: list[str], seed: int
    ) -> BlendedClassifier:
        """The official start: class sums, nn.Linear's uniform bias, every alpha at the data-driven mean."""
        bound = 1 / math.sqrt(samples.shape[1])
        generator = torch.Generator().manual_seed(seed)
        bias = (torch.rand(len(class_names), generator=generator, dtype=torch.float64) * 2 - 1) * bound
        alpha = initial_alpha(samples @ text.T, labels, self.config.alpha_init_scale)
        role = "each class's visual prototype is the sum of its support features"
        prototypes, _ = class_sums(samples, labels, class_names, self.name, role)
        return BlendedClassifier(prototypes, bias, alpha, text)

    def descend(
        self, model: BlendedClassifier, samples: torch.Tensor, labels: torch.Tensor, val: FeatureSet | None, task: Task
    ) -> None:
        """The official loop: a full-batch SGD step of W and b per iteration, alpha's every ``alpha_every``; the
        iteration ``select`` names is left in ``model``."""
        cfg = self.config
        lr_w, lr_alpha = weight_step(samples), alpha_step(samples @ model.text.T)
        optimizer = torch.optim.SGD([model.weight, model.bias], lr=lr_w, momentum=cfg.momentum)
        keeper, history = BestEpoch(cfg.select), []
        val_features = None if val is None or len(val) == 0 else val.features.double()
        for epoch in range(cfg.epochs):
            loss = nn.functional.cross_entropy(model(samples), labels)
            optimizer.zero_grad()  # W and b only: alpha's gradient keeps accumulating, as in the official code
            loss.backward()
            optimizer.step()
            if (epoch + 1) % cfg.alpha_every == 0:
                accumulated = model.alpha.grad  # the sum of every iteration's gradient so far
                assert accumulated is not None
                with torch.no_grad():
                    model.alpha.sub_(lr_alpha * accumulated)
            row = {"epoch": float(epoch + 1), "train_loss": check_loss(loss.item(), epoch + 1, lr_w)}
            if val is not None and val_features is not None:
                with torch.no_grad():
                    row.update(validation_scores(model(val_features), val.labels, len(task.class_names)))
            keeper.observe(epoch + 1, row, lambda: blend_state(model))
            history.append(row)
            if task.on_epoch is not None:
                task.on_epoch(row)
        self.selection_, kept = keeper.choose(history, None if val is None else val.labels, len(task.class_names))
        if kept is not None:
            model.load_state_dict(kept)
        self.history_, self.best_epoch_ = history, self.selection_.epoch

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) f W^T + b + alpha * (f . t) on the normalised features, before temperature scaling."""
        samples = normalize(features.float())
        return samples @ self.weight_.T + self.bias_ + self.alpha_ * (samples @ self.text_.T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "weight": self.weight_,
            "bias": self.bias_,
            "alpha": self.alpha_,
            "text": self.text_,
            "temperature": self.temperature_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.bias_, self.alpha_ = tensors["weight"], tensors["bias"], tensors["alpha"]
        self.text_, self.temperature_ = tensors["text"], tensors["temperature"].reshape(())
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return int(self.weight_.numel() + self.bias_.numel() + self.alpha_.numel()) if hasattr(self, "weight_") else 0
