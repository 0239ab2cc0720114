"""ProKeR (Bendou et al., CVPR 2025, "ProKeR: A Kernel Perspective on Few-Shot Adaptation of Large
Vision-Language Models"): kernel ridge regression of the one-hot labels' residual over zero-shot CLIP in an RKHS,
a proximal term keeping the function near zero-shot. Training-free.

As the official ProKeR code (``trainers/proker.py`` ``ProKeR`` and ``RBF_Kernel``, ``main.py`` ``run``,
``utils.py``; read in omarnust/BReg-Adapter, a later copy of the repository whose history up to commit
f2ecb3d, 2025-03-05, is Yassir Bendou's ProKeR code, read at that commit; no snapshot of ybendou/ProKeR itself
was to be had): the samples ``s`` are the L2-normalised support features of every augmented pass
(``--augment-epoch``, 10 by default); the kernel is ``k(x, y) = exp(-beta (1 - x . y))``; the coefficients are
``a = (K_SS / lambda + I)^-1 (Y - T_S)`` with ``Y`` the one-hot labels and ``T_S`` the samples' zero-shot
cosines (``utils.py`` ``get_clip_weights``, as ``zero_shot``, with no logit scale); the logits are
``T(x) + K(x, S) a``. beta and lambda are searched over ``linspace`` grids (``configs/<backbone>/configs_proker/
<dataset>.yaml``; the defaults here are the grid its Caltech101, FGVC, Food101 and UCF101 files share: beta 20
values in [0.5, 3], lambda 10 in [0.001, 1]), beta the outer loop, keeping the first pair with the best val
accuracy (a strict improvement).

How the official code chose them: with its default ``--hp-selection tip-adapter``, on the dataset's whole
validation split, except for ImageNet, where ``main.py`` sets the validation features to the test features (the
search runs on the test set there); ``--hp-selection imagenet`` takes per-shot values
(``configs/RN50/configs_proker/hyperparameters.json``, the ImageNet choices averaged over seeds, so chosen on
ImageNet's test set), and ``coop`` a val set of min(4, shots) images per class.

It does not transfer to new class names: the regression fits one residual column per training class, and the
paper evaluates few-shot classification and domain generalisation, not base-to-new.

Where fewclip differs, and why:

- The search runs on fewclip's validation split, never on test. Without one (or with ``search: false``) beta
  and lambda are the ``hyperparameters.json`` values of the shot budget (an unlisted budget takes the largest
  listed one below it; below the smallest, the smallest).
- ``augment_views`` (10, the official default) are fewclip's cached views: RandomResizedCrop of scale 0.08-1 +
  flip (the official: scale 0.5-1); every view is a sample and the plain image is not (as the official with
  more than one pass). ``augment_views: 0`` fits the plain features.
- The regression is solved in float64 (the official: float32); the stored coefficients are float32.
- ``calibrate`` (default true) temperature-scales the logits on val; the argmax, and so every accuracy, is the
  official code's. ``calibrate: false`` gives its logits.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, HeadBase, Task, normalize
from fewclip.heads.on_features.support import support_samples
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.heads.prompts.lengths import ChecksTemplates
from fewclip.heads.registry import register_head
from fewclip.training.calibration import TemperatureScaled, calibrate, temperature_tensor
from fewclip.training.schedule import for_shots

# configs/RN50/configs_proker/hyperparameters.json: {shots: (beta, lambda)} chosen on ImageNet
FIXED_BY_SHOTS = {1: (3.0, 0.05), 2: (2.6, 0.05), 4: (1.5, 0.05), 8: (1.66, 0.07), 16: (1.7, 0.1)}


class ProkerConfig(ConfigBlock):
    """The `proker` block: the official defaults (main.py's arguments, the shared per-dataset grid)."""

    beta_grid: tuple[float, float, int] = Field(
        (0.5, 3.0, 20), description="Kernel sharpness beta searched on val: torch.linspace(first, last, count)."
    )
    lmbda_grid: tuple[float, float, int] = Field(
        (0.001, 1.0, 10),
        description="Regularisation lambda searched on val (inner loop): torch.linspace(first, last, count); "
        "smaller keeps the function nearer zero-shot.",
    )
    search: bool = Field(True, description="Search beta and lambda on the validation split (never on test).")
    fixed: dict[int, tuple[float, float]] = Field(
        default_factory=lambda: dict(FIXED_BY_SHOTS),
        description="{shots: [beta, lambda]} without a search (hyperparameters.json, chosen on ImageNet); "
        "an unlisted budget takes the largest listed one below it.",
    )
    augment_views: int = Field(
        10, ge=0, description="Fit to N cached augmented views per support image (the official default 10); 0: plain."
    )
    calibrate: bool = Field(
        True, description="Temperature-scale the logits on the validation split (argmax unchanged)."
    )

    @field_validator("beta_grid", "lmbda_grid")
    @classmethod
    def _positive_grid(cls, grid: tuple[float, float, int]) -> tuple[float, float, int]:
        if grid[0] <= 0 or grid[1] <= 0 or grid[2] < 1:
            raise ValueError(f"a grid is [first > 0, last > 0, count >= 1], got {list(grid)}")
        return grid

    @field_validator("fixed")
    @classmethod
    def _some_fixed(cls, fixed: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
        if not fixed or any(beta <= 0 or lmbda <= 0 for beta, lmbda in fixed.values()):
            raise ValueError(f"fixed must map shots to [beta > 0, lambda > 0], got {fixed}")
        return fixed

    def fixed_for(self, shots: int) -> tuple[float, float]:
        """(beta, lambda) of a shot budget without a search."""
        return for_shots(self.fixed, shots)


def kernel(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """(n, m) ``RBF_Kernel`` on L2-normalised rows: exp(-beta (1 - x . y))."""
    return torch.exp(-beta * (1 - x @ y.T))


def coefficients(gram: torch.Tensor, residual: torch.Tensor, lmbda: float) -> torch.Tensor:
    """(S, C) a = (K_SS / lambda + I)^-1 (Y - T_S)."""
    system = gram / lmbda + torch.eye(len(gram), dtype=gram.dtype)
    solved: torch.Tensor = torch.linalg.solve(system, residual)
    return solved


def search_grid(
    samples: torch.Tensor,
    residual: torch.Tensor,
    val: torch.Tensor,
    val_text: torch.Tensor,
    val_labels: torch.Tensor,
    betas: list[float],
    lmbdas: list[float],
) -> tuple[tuple[float, float] | None, int]:
    """((beta, lambda) of the first pair with the most correct val predictions, that count); None when no pair
    gets any right. beta is the outer loop, as in the official code."""
    best: tuple[float, float] | None = None
    best_correct = 0
    for beta in betas:
        gram, cross = kernel(samples, samples, beta), kernel(val, samples, beta)
        for lmbda in lmbdas:
            logits = val_text + cross @ coefficients(gram, residual, lmbda)
            correct = int((logits.argmax(dim=-1) == val_labels).sum())
            if correct > best_correct:
                best, best_correct = (beta, lmbda), correct
    return best, best_correct


@register_head
class ProkerHead(TemperatureScaled, ChecksTemplates, HeadBase):
    name = "proker"
    paper = "Bendou et al., CVPR 2025 (ProKeR)"
    official_code = "ybendou/ProKeR"
    paper_selection = "few-shot validation"  # main.py: min(4, shots) val a class; ImageNet: test
    paper_selection_except = {"ImageNet": "test set (released code)"}
    config_key = "proker"
    Config = ProkerConfig
    published_as = "ProKeR"
    validation_search = "ProKeR's kernel sharpness beta and regularisation lambda (a 20 x 10 grid)"
    uses_shots = True
    transfers = False  # one residual column per training class
    uses_augmented_views = True
    calibrates = True
    config: ProkerConfig

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "ProkerHead":
        samples, labels = support_samples(train, self.name, "the kernel regression is fitted to them")
        self.check(task)
        if int(labels.max()) >= len(task.class_names):
            raise ValueError(
                f"{self.name}: a support label is {int(labels.max())} but the task has {len(task.class_names)} "
                f"classes; the labels index task.class_names"
            )
        text = ZeroShotHead().fit(Task(list(task.class_names), list(task.templates), task.backbone)).prototypes_
        self.prototypes_, self.support_ = text.float(), samples.float()
        one_hot = torch.nn.functional.one_hot(labels, len(task.class_names)).double()
        residual = one_hot - samples @ text.double().T  # (S, C) Y - T_S
        (self.beta_, self.lmbda_), self.search_note_ = self.choose(samples, residual, val, task.shots)
        gram = kernel(samples, samples, self.beta_)
        # contiguous, as a reloaded head's are: the solve returns a transposed view, and BLAS may round a product
        # with it differently from one with the same numbers laid out by row (seen on MKL limited to SSE4.2)
        self.coefficients_ = coefficients(gram, residual, self.lmbda_).float().contiguous()
        self.history_: list[dict[str, float]] = []  # training-free
        self.calibration_ = calibrate(self.config.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def choose(
        self, samples: torch.Tensor, residual: torch.Tensor, val: FeatureSet | None, shots: int
    ) -> tuple[tuple[float, float], str]:
        """((beta, lambda), how they were chosen): searched on val, else the fixed values of the shot budget."""
        cfg = self.config
        fixed = cfg.fixed_for(shots)
        if not cfg.search:
            return fixed, "fixed (search: false)"
        if val is None or len(val) == 0:
            return fixed, "fixed: no validation split to search on"
        val_samples = normalize(val.features.double())
        pair, correct = search_grid(
            samples,
            residual,
            val_samples,
            val_samples @ self.prototypes_.double().T,
            val.labels,
            torch.linspace(*cfg.beta_grid).tolist(),
            torch.linspace(*cfg.lmbda_grid).tolist(),
        )
        if pair is None:
            return fixed, f"fixed: no (beta, lambda) classifies any of the {len(val)} val images correctly"
        return pair, f"searched on {len(val)} val images: {correct} correct"

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) zero-shot cosines + K(x, S) a, before temperature scaling."""
        samples = normalize(features.float())
        return samples @ self.prototypes_.T + kernel(samples, self.support_, self.beta_) @ self.coefficients_

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "prototypes": self.prototypes_,
            "support": self.support_,
            "coefficients": self.coefficients_,
            "hyperparameters": torch.tensor([self.beta_, self.lmbda_], dtype=torch.float64),
            "temperature": self.temperature_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.prototypes_, self.support_ = tensors["prototypes"], tensors["support"]
        self.coefficients_ = tensors["coefficients"]
        self.beta_, self.lmbda_ = (float(v) for v in tensors["hyperparameters"])
        self.temperature_ = tensors["temperature"].reshape(())

    def trainable_parameters(self) -> int:
        return 0  # training-free: the coefficients are solved for, beta and lambda searched
