"""The training loop on cached image features: the linear probe, the prompt learners (CoOp, CoCoOp, KgCoOp,
ProGrad) and the adapters (CLIP-Adapter, Tip-Adapter-F, ZS-LP, CLAP) train through it.

One plain function (``train_on_features``): SGD (or the head's optimiser) with the schedule of
``fewclip.training.schedule`` or a constant rate, epoch selection on validation (``fewclip.training.selection``),
and a checkpoint after every epoch that a killed run resumes from when nothing it trained on changed (``run_key``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, TypedDict

import torch
from torch import nn
from fewclip.progress import epoch_bar

from fewclip.heads.artifacts import write_tensors
from fewclip.heads.base import FeatureSet, Task, check_loss
from fewclip.training.checkpoint import (
    best_metadata,
    read_checkpoint,
    restore_optimizer,
    restored_best,
    saved_part,
    training_tensors,
)
from fewclip.training.schedule import Schedule, lr_at_epoch, lr_at_step, schedules_agree
from fewclip.training.selection import BestEpoch, SelectRule, Selection, validation_scores

ViewSampling = Literal["per_image", "pool"]
DROP_LAST_HELP = (
    "Drop each epoch's last partial batch when there are at least batch_size training images, as "
    "Dassl's loader does (the reference code's); false: train on it too."
)
VIEWS_HELP = (
    "With augment_views: 'pool' cuts each epoch's batches from all N views of every image, shuffled "
    "together (the CLAP repository's adapters); 'per_image' takes one random view of each image per epoch."
)


@dataclass
class FeatureTrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    warmup_lr: float
    schedule: Schedule = "fewclip"  # the cosine's span after warm-up (fewclip.training.schedule)
    drop_last: bool = False  # Dassl's train loader: drop an epoch's last partial batch (see ``batch_count``)
    views: ViewSampling = "per_image"  # with cached augmented views: how an epoch draws them (``epoch_batches``)
    per_step: bool = False  # anneal every optimiser step over all epochs' steps, no warm-up (Tip-Adapter-F)
    constant_lr: bool = False  # every epoch at ``lr``, no warm-up (the linear probe's AdamW); not logged per epoch

    def __post_init__(self) -> None:
        if (self.per_step or self.constant_lr) and self.warmup_epochs:
            raise ValueError("a per-step cosine or a constant rate has no warm-up: set warmup_epochs to 0")
        if self.per_step and self.constant_lr:
            raise ValueError("per_step anneals the rate and constant_lr keeps it: choose one")

    def lr_at(self, epoch: int) -> float:
        """The learning rate epoch ``epoch`` (0-based) trains at (its first step's, with ``per_step``)."""
        if self.constant_lr:
            return self.lr
        if self.per_step:
            return lr_at_step(epoch, self.epochs, self.lr)  # step epoch * k of epochs * k: the same angle
        return lr_at_epoch(epoch, self.epochs, self.lr, self.warmup_epochs, self.warmup_lr, self.schedule)

    def key_values(self) -> dict[str, Any]:
        """The settings a checkpoint's key hashes; ``schedule``, ``drop_last`` and ``views`` only where they
        differ from fewclip's earlier behaviour, so a checkpoint written before they existed still resumes
        when nothing it trained on changed."""
        values = asdict(self)
        if self.schedule == "fewclip" or schedules_agree(self.epochs, self.warmup_epochs):
            del values["schedule"]
        for name, before in (("drop_last", False), ("views", "per_image"), ("per_step", False), ("constant_lr", False)):
            if values[name] == before:
                del values[name]
        return values


def settings_of(config: Any, epochs: int | None = None, momentum: float | None = None) -> FeatureTrainSettings:
    """The settings a head's config block names: its SGD keys (``epochs``, ``batch_size``, ``lr``, ``momentum``,
    ``weight_decay``, ``warmup_epochs``, ``warmup_lr``) and, where the block has them, ``schedule``,
    ``drop_last`` and ``view_sampling``. ``epochs``: a shot budget's count, for a block that lists epochs per
    budget; ``momentum``: for a head whose optimiser is not the loop's SGD (0: unused)."""
    return FeatureTrainSettings(
        config.epochs if epochs is None else epochs,
        config.batch_size,
        config.lr,
        config.momentum if momentum is None else momentum,
        config.weight_decay,
        config.warmup_epochs,
        config.warmup_lr,
        config.schedule,
        config.drop_last,
        getattr(config, "view_sampling", "per_image"),
    )


def batch_count(n_images: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch over ``n_images``. Dassl's train loader (``dassl/data/data_manager.py``
    ``build_data_loader``: ``drop_last=is_train and len(data_source) >= batch_size``) drops the last
    partial batch, but keeps a lone short batch when there are fewer images than one batch."""
    if drop_last and n_images >= batch_size:
        return n_images // batch_size
    return -(-n_images // batch_size)


def epoch_batches(
    train: FeatureSet, settings: FeatureTrainSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One epoch's (features (m, d), labels (m,), batches of row indices into them).

    Without views: the plain features in a random order. With cached views (n, V, d), ``per_image`` takes one
    random view of every image (as Dassl's loader augments each image once an epoch); ``pool`` shuffles all
    n * V views and cuts the epoch's batches from them (jusiro/CLAP ``trainers/adapters.py``
    ``TrainerXCostume.run_epoch``: as many batches as the image loader has, sliced from the shuffled pool).
    """
    n, size = len(train.labels), settings.batch_size
    if train.views is not None and settings.views == "pool":
        x = train.views.flatten(0, 1)  # image-major: image i's views are rows i*V .. i*V + V-1
        y = train.labels.repeat_interleave(train.views.shape[1])
    else:
        x, y = train.features, train.labels
    order = torch.randperm(len(y), generator=generator)
    if train.views is not None and settings.views == "per_image":
        pick = torch.randint(train.views.shape[1], (n,), generator=generator)
        x = train.views[torch.arange(n), pick]
    count = batch_count(n, size, settings.drop_last)
    return x, y, [order[i * size : (i + 1) * size] for i in range(count)]


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run_key(
    module: nn.Module,
    settings: FeatureTrainSettings,
    seed: int,
    n_classes: int,
    train: FeatureSet,
    val: FeatureSet | None,
    extra: str = "",
    generator: torch.Generator | None = None,
) -> str:
    """What a checkpoint must match to be resumed: the schedule, the seed, the initial parameters (and the
    initial state of ``generator``), the features and labels, and ``extra`` (the head's class names, config,
    backbone)."""
    digest = hashlib.sha256(json.dumps([settings.key_values(), seed, n_classes, extra]).encode())
    named = sorted(module.state_dict().items()) + [("train.x", train.features), ("train.y", train.labels)]
    if val is not None:
        named += [("val.x", val.features), ("val.y", val.labels)]
    if generator is not None:
        named.append(("generator", generator.get_state()))
    for name, tensor in named:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class UnitOptions(TypedDict):
    """The loop's arguments that come from the unit being trained and the head's config (``unit_options``)."""

    seed: int
    checkpoint: Path | None
    checkpoint_key: str
    progress: bool
    select: SelectRule
    on_epoch: Callable[[dict[str, float]], None] | None


def unit_options(task: Task, config: Any) -> UnitOptions:
    """What every head passes the loop from its task and config: the unit's seed, checkpoint file and key
    (``head_checkpoint_key``), progress bar and epoch callback, and the head's epoch-selection rule
    (``train_on_features(module, logits_fn, train, val, n_classes, settings, **unit_options(task, cfg))``)."""
    return UnitOptions(
        seed=task.seed,
        checkpoint=task.checkpoint,
        checkpoint_key=head_checkpoint_key(task, config),
        progress=task.progress,
        select=config.select,
        on_epoch=task.on_epoch,
    )


def head_checkpoint_key(task: Task, config: Any) -> str:
    """What else a prompt learner's checkpoint depends on: class names, the head's config, the backbone."""
    fingerprint = getattr(task.backbone, "fingerprint", None)
    return json.dumps(
        {
            "classes": list(task.class_names),
            "config": config.key_values(task.class_names),
            "backbone": fingerprint() if callable(fingerprint) else None,
        },
        sort_keys=True,
        default=str,
    )


def _save_checkpoint(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
    best: BestEpoch,
    key: str,
    generator: torch.Generator | None,
) -> None:
    tensors = training_tensors(_module_state(module), optimizer, best.state)
    if generator is not None:  # where the next epoch's order continues the stream
        tensors["generator"] = generator.get_state()
    meta = {"epoch": epoch, "history": history, **best_metadata(best), "run_key": key}
    # The epoch and history travel in the same file as their tensors: one rename commits both, so a
    # kill can never leave tensors of one epoch beside the history of another. The file carries a
    # digest of its tensors, so a damaged checkpoint is detected rather than resumed from.
    write_tensors(path, tensors, {"fewclip": json.dumps(meta)}, self_check=True)


def _load_checkpoint(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    key: str,
    select: SelectRule,
    generator: torch.Generator | None,
) -> tuple[int, list[dict[str, float]], BestEpoch] | None:
    """The saved (epoch, history, best), loaded into module and optimizer; None when there is no
    checkpoint, it belongs to another run (other settings, data or initial parameters), or it is
    damaged (then it is deleted with a warning and training starts over: ``checkpoint.read_checkpoint``)."""
    saved = read_checkpoint(path, key)
    if saved is None:
        return None
    tensors, meta = saved
    module.load_state_dict(saved_part(tensors, "model"))
    if generator is not None:
        generator.set_state(tensors["generator"])
    restore_optimizer(optimizer, tensors)
    return meta["epoch"], meta["history"], restored_best(select, meta, tensors)


def train_on_features(
    module: nn.Module,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    train: FeatureSet,
    val: FeatureSet | None,
    n_classes: int,
    settings: FeatureTrainSettings,
    seed: int,
    checkpoint: Path | None = None,
    val_logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    checkpoint_key: str = "",
    progress: bool = False,
    select: SelectRule = "auto",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    train_step: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[dict[str, float]], Selection, dict[str, torch.Tensor]]:
    """SGD over ``module``'s trainable parameters with warm-up + cosine, one epoch at a time (with
    ``settings.per_step``, the cosine's rate is set before every optimiser step instead of every epoch).

    Leaves the epoch chosen by ``select`` (``fewclip.training.selection``; the last epoch without val) in
    ``module`` and returns (history, that selection, state of the last epoch). With ``checkpoint``,
    state is saved after every epoch and a killed run
    resumes from the last saved epoch (same result as an uninterrupted run: the data order of each
    epoch is drawn from a generator seeded by (seed, epoch)). A checkpoint left by a run with other
    settings, seed, data, initial parameters, ``checkpoint_key`` or ``select`` is ignored and overwritten.
    ``progress`` shows a bar over the epochs (rate, ETA, loss and val macro-F1); ``on_epoch`` is called
    with each epoch's history row as it ends (live tracking). ``train_step(x, y)`` replaces the
    cross-entropy step for heads with their own loss or gradient (it fills the parameters' ``.grad`` and
    returns the loss); ``make_optimizer`` replaces SGD (the loop still sets each epoch's learning rate).
    ``generator``: one stream every epoch's order is drawn from in turn (the linear probe's, which drew its
    initial weights from it first), saved with each checkpoint; without it, epoch e's order comes from a
    generator seeded with (seed, e).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = (
        make_optimizer(params)
        if make_optimizer is not None
        else torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    )
    history: list[dict[str, float]] = []
    keeper = BestEpoch(select)
    start_epoch = 0
    key = ""
    if checkpoint is not None:  # the rule is in the key: it decides which state the checkpoint keeps as "best"
        key = run_key(module, settings, seed, n_classes, train, val, json.dumps([checkpoint_key, select]), generator)
        resumed = _load_checkpoint(checkpoint, module, optimizer, key, select, generator)
        if resumed is not None:
            start_epoch, history, keeper = resumed
    bar = epoch_bar(start_epoch, settings.epochs, "epochs", progress)
    for epoch in bar:
        lr = settings.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = generator if generator is not None else torch.Generator().manual_seed(seed * 100003 + epoch)
        x, y, batches = epoch_batches(train, settings, order)
        total, seen = 0.0, 0
        module.train()
        for step, idx in enumerate(batches):
            if settings.per_step:  # every epoch has len(batches) steps (batch_count depends on the image count)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at_step(epoch * len(batches) + step, settings.epochs * len(batches), settings.lr)
            optimizer.zero_grad(set_to_none=True)
            if train_step is None:
                loss = nn.functional.cross_entropy(logits_fn(x[idx]).float(), y[idx])
                loss.backward()
                value = loss.item()
            else:
                value = train_step(x[idx], y[idx])
            check_loss(value, epoch + 1, optimizer.param_groups[0]["lr"])
            optimizer.step()
            total, seen = total + value * len(idx), seen + len(idx)
        module.eval()
        row = {"epoch": float(epoch + 1), "train_loss": total / seen}
        if not settings.constant_lr:
            row["lr"] = lr
        if val is not None and len(val):
            with torch.no_grad():
                val_logits = (val_logits_fn or logits_fn)(val.features).float()
            row.update(validation_scores(val_logits, val.labels, n_classes))
        keeper.observe(epoch + 1, row, lambda: _module_state(module))
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        bar.set_postfix({k: f"{row[k]:.3f}" for k in ("train_loss", "val_macro_f1") if k in row}, refresh=False)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, module, optimizer, epoch + 1, history, keeper, key, generator)
    last = _module_state(module)
    selection, kept = keeper.choose(history, val.labels if val is not None else None, n_classes)
    if kept is not None:  # the rule's candidate, kept while training
        module.load_state_dict(kept)
    return history, selection, last
