"""The head contract every classifier follows, and its safetensors + JSON persistence.

A head is built from its config (``__init__`` only stores it), learns in ``fit`` (which returns
``self``; learned state ends in ``_``), scores with ``logits`` / ``predict`` on image features
(a head that ``tunes_encoders`` trains on ``ImageSet``s and scores pixels with ``image_logits``),
and round-trips through ``save_head`` / ``registry.load_head``: ``<stem>.safetensors`` holds the tensors,
``<stem>.json`` the head name, its config, class names and anything else worth keeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import torch
from fewclip.backbones.protocol import Backbone
from fewclip.distributed import SINGLE, Ranks
from fewclip.fileio import write_json
from fewclip.heads.artifacts import SAFETENSORS_SHA256, DamagedArtifact, read_artifact_json, read_tensors, write_tensors
from fewclip.training.selection import best_epoch

log = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """Image features (n, dim) float32, unnormalised, and their labels (n,); optionally augmented views."""

    features: torch.Tensor
    labels: torch.Tensor
    views: torch.Tensor | None = None  # (n, V, dim) features of V augmented views of each image, if cached

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ImageSet:
    """Image files and their labels (n,): what a ``tunes_encoders`` head trains on instead of features."""

    paths: list[Path]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Task:
    """What a head may use besides features: class names, prompt templates, the frozen backbone."""

    class_names: list[str]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    backbone: Backbone | None = None  # needed by heads that read text (zero-shot, prompt learning) or tune encoders
    seed: int = 0
    progress: bool = False
    shots: int = 0  # the shot budget being trained (some heads scale epochs with it)
    checkpoint: Path | None = None  # where an iterative head saves per-epoch state to resume from
    on_epoch: Callable[[dict[str, float]], None] | None = None  # told each history row as an epoch ends
    workers: int = 0  # DataLoader workers decoding images for a tunes_encoders head (model.loader_threads)
    ranks: Ranks = SINGLE  # under torchrun: a tunes_encoders head trains on every rank with DDP


def task_backbone(task: Task, head: str) -> Backbone:
    """``task.backbone``, or the ValueError saying that ``head`` (a head's name) needs it."""
    if task.backbone is None:
        raise ValueError(f"{head} needs the backbone's text tower (Task.backbone is None)")
    return task.backbone


class Head(Protocol):
    """The contract. Every head has every capability flag (``HeadBase`` gives each its default; see
    ``contract.CAPABILITIES`` for what each promises); callers read the flags and never probe for optional methods."""

    name: ClassVar[str]
    config_key: ClassVar[str | None]  # its top-level config block (``coop:``); None: no hyperparameters
    Config: ClassVar[type]  # its config block class (a ConfigBlock, every key with a default)
    uses_shots: ClassVar[bool]  # False: trained once, without images (zero-shot)
    uses_text: ClassVar[bool]  # True: fit needs Task.backbone (the text tower)
    checks_task: ClassVar[bool]  # check(task) fails before any training (every text head checks its prompts)
    transfers: ClassVar[bool]  # transfer(backbone, class_names) classifies other class names (base-to-new)
    needs_text_at_predict: ClassVar[bool]  # attach(backbone, class_names) before logits (image-dependent prompts)
    per_template_scores: ClassVar[bool]  # template_logits(features) and templates_: one score set per template
    has_differentiable_logits: ClassVar[bool]  # differentiable_logits(features) for saliency (logits is no-grad)
    uses_augmented_views: ClassVar[bool]  # Config.augment_views: fit gets FeatureSet.views
    selects_epoch: ClassVar[bool]  # iterative; Config.select; best_epoch_ and selection_ after fit
    calibrates: ClassVar[bool]  # Config.calibrate; calibration_ and temperature_ after fit
    paper: ClassVar[str | None]  # the paper the head reproduces (None: fewclip's own), declared in the class itself
    official_code: ClassVar[str | None]  # the repository whose computation it follows (tests/reference/ proves it)
    tunes_encoders: ClassVar[bool]  # fit gets ImageSets (images, not features); image_logits(pixels) scores,
    # image_saliency_pass(pixels) gives saliency its tuned tower
    needs: ClassVar[frozenset[str]]  # backbone capabilities (backbones.protocol.CAPABILITIES) it cannot run without
    history_: list[dict[str, float]]

    def fit(
        self, task: Task, train: FeatureSet | ImageSet | None = None, val: FeatureSet | ImageSet | None = None
    ) -> "Head": ...  # ImageSets for a tunes_encoders head

    def logits(self, features: torch.Tensor) -> torch.Tensor: ...

    def predict(self, features: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...

    def trainable_parameters(self) -> int: ...

    @property
    def config(self) -> Any: ...


class HeadBase:
    """What a head class subclasses: every capability flag (``contract.CAPABILITIES``) defaults to False here, in one
    place (scikit-learn's ``_DEFAULT_TAGS``), so a head declares only the flags it turns on.

    It holds declarations, the contract's ``__init__`` (which only stores the config: the head's own ``Config``
    with its defaults when none is given) and ``predict`` (the argmax of the head's ``logits``), no other
    behaviour. ``name``, ``paper``, ``official_code``, ``paper_selection``, ``config_key`` and ``Config`` have no
    default: every head says them (``paper``, ``official_code`` and ``paper_selection`` in the class that declares
    its ``name``).
    """

    name: ClassVar[str]
    paper: ClassVar[str | None]
    official_code: ClassVar[str | None]
    config_key: ClassVar[str | None]
    Config: ClassVar[type]
    uses_shots: ClassVar[bool] = False
    uses_text: ClassVar[bool] = False
    checks_task: ClassVar[bool] = False
    transfers: ClassVar[bool] = False
    needs_text_at_predict: ClassVar[bool] = False
    per_template_scores: ClassVar[bool] = False
    has_differentiable_logits: ClassVar[bool] = False
    uses_augmented_views: ClassVar[bool] = False
    selects_epoch: ClassVar[bool] = False
    calibrates: ClassVar[bool] = False
    tunes_encoders: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()  # refused at config load on a model.library that lacks one
    # what else a user may do when the model lacks one of ``needs_for``'s capabilities, e.g. a key to turn off
    needs_advice: ClassVar[dict[str, str]] = {}
    # What the report says of a head, declared here and never listed by name in the report:
    published_as: ClassVar[str | None] = None  # its name in the papers' tables (report/published.csv); read only
    # from the class that declares ``name`` (``own_declaration``): KgCoOp is not published as CoOp
    # how its paper chose hyper-parameters, one of ``selection_protocol.PAPER_SELECTIONS`` (None: no paper); no
    # default: declared in the class that declares ``name``, as are the datasets where the released code did
    # otherwise (``paper_selection_except``, dataset -> protocol)
    paper_selection: ClassVar[str | None]
    paper_selection_except: ClassVar[dict[str, str]] = {}
    validation_search: ClassVar[str | None] = None  # what it searches on the validation split, in words

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def needs_for(cls, config: Any) -> frozenset[str]:
        """The capabilities the head needs with ``config`` (its block): ``needs``, and more where a key asks for
        them (MaPLe's coupling needs vision prompts)."""
        return cls.needs

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n,) the class each row scores highest (the argmax of ``logits``, which every head defines)."""
        scores: torch.Tensor = self.logits(features)  # type: ignore[attr-defined]  # every head defines logits
        return scores.argmax(dim=-1)


def own_declaration(head_cls: type, attr: str) -> Any:
    """``attr`` as the class that declares the head's ``name`` sets it (None if that class does not)."""
    owner = next((cls for cls in head_cls.__mro__ if "name" in vars(cls)), head_cls)
    return vars(owner).get(attr)


class TrainingDiverged(ValueError):
    """Training whose loss stopped being a finite number: the state is garbage, and nothing of it is saved."""

    def __init__(self, loss: float, epoch: int, lr: float, message: str = "") -> None:
        self.loss, self.epoch, self.lr = loss, epoch, lr
        super().__init__(
            message
            or f"training diverged: the loss became {loss} in epoch {epoch} at learning rate "
            f"{lr:g}; lower the learning rate (or, with precision bf16/fp16, train in fp32)"
        )


def check_loss(loss: float, epoch: int, lr: float) -> float:
    """``loss``, or ``TrainingDiverged`` if it is nan or infinite (epoch 1-based)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(loss, epoch, lr)
    return loss


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a nan or an infinity."""
    return sorted(name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def differentiable_logits(head: Any, features: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, C) logits with autograd on (what saliency backpropagates through)."""
    scores: torch.Tensor = (
        head.differentiable_logits(features) if head.has_differentiable_logits else head.logits(features)
    )
    return scores


def normalize(features: torch.Tensor) -> torch.Tensor:
    normalized: torch.Tensor = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return normalized


RETRAIN_ADVICE = "re-run `fewclip train` with the run's config to retrain it"


def head_files(stem: Path) -> tuple[Path, Path]:
    """A saved head's (tensor file, JSON file)."""
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_head(head: Head, stem: Path, class_names: Sequence[str], meta: dict[str, Any] | None = None) -> None:
    """Write ``<stem>.safetensors`` and then ``<stem>.json`` with the tensors' sha256 (the JSON, written
    last, marks a complete artifact and vouches for the tensor file)."""
    tensor_file, json_file = head_files(stem)
    state = head.state_dict()
    if bad := non_finite(state):
        raise ValueError(
            f"{head.name}: not saving {stem.name}: its {', '.join(bad[:3])} hold nan or infinite values "
            f"(training diverged; lower the learning rate)"
        )
    checksum = write_tensors(tensor_file, state)
    record = {
        "head": head.name,
        "config": head.config.model_dump(mode="json"),
        "class_names": list(class_names),
        "trainable_params": head.trainable_parameters(),
        "history": head.history_,
        "best_epoch": best_epoch(head),
        **(meta or {}),
        SAFETENSORS_SHA256: checksum,
    }
    write_json(json_file, {**record, MEANING_SHA256: meaning_digest(record)})


MEANING_SHA256 = "meaning_sha256"  # the JSON key of the digest over what gives a head's tensors their meaning
MEANING_KEYS = ("head", "config", "class_names", "templates", SAFETENSORS_SHA256)


def meaning_digest(meta: dict[str, Any], keys: Sequence[str] = MEANING_KEYS) -> str:
    """sha256 over the head's name, config, class names (the order of its logits), templates and its tensors'
    checksum (or another artifact's ``keys``): the tensor bytes alone do not say which column is which class."""
    chosen = {key: meta.get(key) for key in keys}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()


def read_head_meta(stem: Path) -> dict[str, Any] | None:
    """A head's JSON, None if it was never written; ``DamagedArtifact`` naming it if it is not JSON or what gives
    its tensors their meaning (``meaning_digest``) was edited."""
    file = head_files(stem)[1]
    if not file.is_file():
        return None
    meta = read_artifact_json(file, "head file", RETRAIN_ADVICE)
    if not isinstance(meta, dict) or "head" not in meta:
        raise DamagedArtifact(file, "head file", "not a fewclip head description", RETRAIN_ADVICE)
    recorded = meta.get(MEANING_SHA256)
    if recorded is not None and recorded != meaning_digest(meta):
        raise DamagedArtifact(
            file,
            "head file",
            "its name, config, class names or templates differ from the ones it was saved with: edited after training",
            RETRAIN_ADVICE,
        )
    return meta


def read_head_tensors(stem: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The head's tensors, checked against the sha256 in its JSON (heads saved before checksums were
    recorded are accepted if they load)."""
    tensors, _ = read_tensors(head_files(stem)[0], meta.get(SAFETENSORS_SHA256), "head file", RETRAIN_ADVICE)
    return tensors


def finite_head_tensors(stem: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``read_head_tensors``, and ``DamagedArtifact`` too if a tensor holds nan or an infinity (a checksum
    vouches for bytes, not for their being numbers)."""
    tensors = read_head_tensors(stem, meta)
    if bad := non_finite(tensors):
        raise DamagedArtifact(
            head_files(stem)[0], "head file", f"{', '.join(bad[:3])} hold nan or infinite values", RETRAIN_ADVICE
        )
    return tensors


def intact_head_meta(stem: Path) -> dict[str, Any] | None:
    """A head's JSON if the head is complete and undamaged; None (with a warning if damaged) if not."""
    try:
        meta = read_head_meta(stem)
        if meta is not None:
            finite_head_tensors(stem, meta)
        return meta
    except DamagedArtifact as err:
        log.warning("%s: damaged %s (%s); retraining it", err.path, err.what, err.reason)
        return None
