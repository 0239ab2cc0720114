"""The training loop of heads that tune inside the encoders: AdamW + cosine (or SGD with Dassl's per-epoch
warm-up + cosine: ``encoder_schedule``) over a fixed number of optimiser steps, on augmented images, validated
and checkpointed at every epoch end.

A checkpoint (safetensors, no pickle) holds the trainable weights, the optimiser's moments, the best
epoch's weights and, in its JSON metadata, the epoch, step, history, scheduler, grad scaler, optimiser
groups and torch RNG (dropout). The data order and augmentation of an epoch are functions of (seed, epoch)
(``image_batches``), so resuming at an epoch end replays exactly what an uninterrupted run does.

An epoch is ``batch_count`` steps (``plan.drop_last``: Dassl's loader, which drops the last partial batch
when there are at least ``batch_size`` images; the dropped images are the tail of the epoch's order, the
same on every rank and in a resumed run).

Under torchrun (``ranks.world > 1``) the network is wrapped in ``DistributedDataParallel``: each optimiser
step's ``batch_size`` images are the one-process run's, cut into one contiguous part per rank (per-rank batch =
global / world); each rank's loss is its images' summed cross-entropy over the step's global image count,
times the world size, so DDP's gradient average is the one-process gradient up to reduction order.
Validation is shared out the same way and gathered; rank 0 alone writes checkpoints, which hold every
rank's RNG state. Dropout draws differ between ranks (rank r seeds with ``seed + r * 1_000_003``), so with
dropout > 0 a many-process run is statistically, not numerically, the one-process run.

Two things a method may add (PromptSRC does both): a regulariser, when the network's forward returns
``PenalizedLogits`` in training (each image's penalty is added to its cross-entropy, so a step's loss is the
mean over its images of both, whatever the micro-batches and ranks); and an average over epochs instead of
one kept epoch (``plan.epoch_weights``: the weighted sum of every epoch's end-of-epoch weights, accumulated as
epochs end, saved in each checkpoint and left in the model at the end).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fewclip.backbones.device import autocast_for
from fewclip.backbones.preprocess import Augmentation, ImageTransform
from fewclip.distributed import SINGLE, Ranks
from fewclip.heads.artifacts import write_tensors
from fewclip.heads.base import ImageSet, check_loss
from fewclip.training.checkpoint import best_metadata, read_checkpoint, restore_optimizer, restored_best, saved_part
from fewclip.training.checkpoint import training_tensors
from fewclip.training.encoder_schedule import build_optimizer
from fewclip.training.image_batches import PAD_LABEL, epoch_batches, plain_batches, rank_part
from fewclip.training.features_loop import batch_count
from fewclip.training.selection import BestEpoch, SelectRule, Selection, validation_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPlan:
    iterations: int  # optimiser steps in all
    batch_size: int  # images per step
    accumulate: int
    lr: float
    min_lr: float
    weight_decay: float
    precision: str
    select: SelectRule = "last"
    augment: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range
    flip: bool = True
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    drop_last: bool = False  # an epoch drops its last partial step when there are >= batch_size images (Dassl)
    # "adamw" (per-step cosine to min_lr) or "sgd" (Dassl: momentum, constant warm-up, per-epoch cosine over
    # epochs of steps_per_epoch steps); see encoder_schedule
    optimizer: str = "adamw"
    momentum: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    steps_per_epoch: int = 0
    # one weight per epoch: keep the weighted sum of the epochs' weights instead of one epoch (select is unused)
    epoch_weights: tuple[float, ...] = ()

    def augmentation(self) -> Augmentation | None:
        """The training images' augmentation; None: the model's own preprocessing."""
        if not self.augment:
            return None
        return Augmentation(scale=self.crop_scale, flip=0.5 if self.flip else 0.0)


class PenalizedLogits(NamedTuple):
    """What a network's forward may return in training: the (n, C) logits and an (n,) penalty per image, added
    to each image's cross-entropy (a regulariser; PromptSRC's consistency terms)."""

    logits: torch.Tensor
    penalty: torch.Tensor


class EpochAverage:
    """The running weighted sum of the epochs' weights (``TrainPlan.epoch_weights``): ``sum_e w_e * state_e``,
    each epoch's term added as it ends (in float32, the trained tensors' type)."""

    def __init__(self, weights: tuple[float, ...], total: dict[str, torch.Tensor] | None = None) -> None:
        self.weights, self.total = weights, total

    def add(self, epoch: int, state: dict[str, torch.Tensor]) -> None:
        """Epoch ``epoch`` (1-based) ended with ``state``."""
        weight = self.weights[epoch - 1]
        weighted = {name: tensor * weight for name, tensor in state.items()}
        self.total = weighted if self.total is None else {k: v + self.total[k] for k, v in weighted.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint saves: the sum so far as ``average.<name>``."""
        return {f"average.{name}": value for name, value in (self.total or {}).items()}

    @classmethod
    def restored(cls, weights: tuple[float, ...], tensors: dict[str, torch.Tensor]) -> "EpochAverage":
        return cls(weights, saved_part(tensors, "average") or None)


class EncoderTrainer:
    """Trains the ``requires_grad`` parameters of ``net``, a module whose forward maps (n, 3, H, W) preprocessed
    pixels to (n, C) logits."""

    def __init__(
        self,
        net: nn.Module,
        transform: ImageTransform,
        plan: TrainPlan,
        seed: int,
        workers: int,
        n_classes: int,
        device: torch.device,
        ranks: Ranks = SINGLE,
    ) -> None:
        self.net, self.transform, self.plan = net, transform, plan
        self.seed, self.workers, self.n_classes, self.device, self.ranks = seed, workers, n_classes, device, ranks
        self.params = {n: p for n, p in net.named_parameters() if p.requires_grad}
        self.forward: nn.Module = net
        if ranks.distributed:
            if (plan.batch_size // plan.accumulate) < ranks.world:
                raise ValueError(
                    f"batch_size / accumulate = {plan.batch_size // plan.accumulate} images per micro-batch "
                    f"is fewer than the {ranks.world} ranks: raise batch_size or lower accumulate"
                )
            ids = (
                [device.index if device.index is not None else torch.cuda.current_device()]
                if device.type == "cuda"
                else None
            )
            self.forward = DistributedDataParallel(net, device_ids=ids)  # broadcasts rank 0's weights
        self.optimizer, self.scheduler = build_optimizer(list(self.params.values()), plan)
        self.average = EpochAverage(plan.epoch_weights)
        self.scaler = torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16")

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state[name].to(param.device, param.dtype))

    def fit(
        self,
        train: ImageSet,
        val: ImageSet | None,
        checkpoint: Path | None,
        key: str,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
    ) -> tuple[list[dict[str, float]], Selection]:
        """Train for ``plan.iterations`` steps; leave the selected epoch's weights in the model."""
        plan = self.plan
        steps_per_epoch = self.epoch_steps(len(train))
        epochs = -(-plan.iterations // steps_per_epoch)
        run_key = self.run_key(train, val, key)
        if plan.epoch_weights and len(plan.epoch_weights) != epochs:
            raise ValueError(f"TrainPlan.epoch_weights has {len(plan.epoch_weights)} weights for {epochs} epochs")
        history: list[dict[str, float]] = []
        keeper = BestEpoch(plan.select)
        step, start_epoch, partial = 0, 0, None
        resumed = self.resume(checkpoint, run_key) if checkpoint is not None else None
        if resumed is not None:
            start_epoch, step, history, keeper, partial = resumed
        for epoch in range(start_epoch, epochs):
            epoch_start = step - (partial["steps"] if partial else 0)
            steps = min(steps_per_epoch, plan.iterations - epoch_start)

            def at_step(
                done: int,
                progress: Callable[[], dict[str, Any]],
                epoch: int = epoch,
                epoch_start: int = epoch_start,
                steps: int = steps,
            ) -> None:
                every = plan.checkpoint_every
                if checkpoint is not None and every and done % every == 0 and done < steps:
                    self.save(checkpoint, epoch, epoch_start + done, history, keeper, run_key, progress())

            row = self.train_epoch(train, epoch, steps, partial, at_step)
            step, partial = epoch_start + steps, None
            row.update(self.validate(val))
            keeper.observe(epoch + 1, row, self.state)
            if plan.epoch_weights:
                self.average.add(epoch + 1, self.state())
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if checkpoint is not None:
                self.save(checkpoint, epoch + 1, step, history, keeper, run_key)
        if plan.epoch_weights:
            assert self.average.total is not None  # every epoch added its term
            self.load(self.average.total)
            return history, Selection(len(history), "weighted average over epochs")
        selection, kept = keeper.choose(history, val.labels if val is not None else None, self.n_classes)
        if kept is not None:
            self.load(kept)
        return history, selection

    def train_epoch(
        self,
        train: ImageSet,
        epoch: int,
        steps: int,
        partial: dict[str, Any] | None = None,
        at_step: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
    ) -> dict[str, float]:
        """``steps`` optimiser steps over the epoch's batches, from ``partial`` (a checkpoint taken inside the
        epoch: the steps done and the running sums, over all ranks) if given; returns its history row (before
        validation)."""
        plan, ranks = self.plan, self.ranks
        micro = plan.batch_size // plan.accumulate
        progress: dict[str, Any] = (
            dict(partial)
            if partial
            else {"steps": 0, "loss": 0.0, "correct": 0, "seen": 0, "lr": self.scheduler.get_last_lr()[0]}
        )
        workers = self.loader_workers((steps - progress["steps"]) * plan.accumulate)
        batches = epoch_batches(
            train,
            self.transform,
            self.seed,
            epoch,
            micro,
            workers,
            plan.augmentation(),
            skip=progress["steps"] * plan.batch_size,
            stop=self.epoch_steps(len(train)) * plan.batch_size,
            ranks=ranks,
        )
        self.net.train()
        loss_sum, correct, seen = 0.0, 0, 0  # this rank's, since ``partial``
        for done in range(progress["steps"] + 1, steps + 1):
            self.optimizer.zero_grad(set_to_none=True)
            group = [batch for _, batch in zip(range(plan.accumulate), batches)]
            images = sum(count for _, _, count in group)  # the step's images over all ranks
            for index, (pixels, labels, _) in enumerate(group):
                with self.no_sync(index < len(group) - 1):
                    with autocast_for(plan.precision, self.device):
                        output = self.forward(pixels)
                    logits = output.logits if isinstance(output, PenalizedLogits) else output
                    targets = labels.to(self.device)
                    loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=PAD_LABEL)
                    if isinstance(output, PenalizedLogits):  # padded rows (PAD_LABEL) carry no penalty either
                        loss = loss + output.penalty.float()[targets != PAD_LABEL].sum()
                    self.scaler.scale(loss * (ranks.world / images)).backward()  # DDP averages: the step's mean
                loss_sum += float(loss.detach())
                correct += int((logits.detach().argmax(-1).cpu() == labels).sum())
                seen += int((labels != PAD_LABEL).sum())
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if at_step is not None:
                at_step(done, functools.partial(self.progress, progress, done, loss_sum, correct, seen))
        final = self.progress(progress, steps, loss_sum, correct, seen)
        check_loss(final["loss"], epoch + 1, progress["lr"])  # gathered: every rank stops together
        return {
            "epoch": float(epoch + 1),
            "lr": progress["lr"],
            "train_loss": final["loss"] / max(final["seen"], 1),
            "train_accuracy": final["correct"] / max(final["seen"], 1),
        }

    def epoch_steps(self, n_images: int) -> int:
        """Optimiser steps in a whole epoch over ``n_images`` (without the last partial one under ``drop_last``)."""
        return batch_count(n_images, self.plan.batch_size, self.plan.drop_last)

    def loader_workers(self, batches: int) -> int:
        """DataLoader workers for a loader of ``batches`` batches: none for one or two (starting worker processes
        costs more than decoding a couple of batches in process: a 1-shot epoch is one step); the batches are the
        same either way (``image_batches``)."""
        return self.workers if batches > 2 else 0

    def progress(self, start: dict[str, Any], steps: int, loss: float, correct: int, seen: int) -> dict[str, Any]:
        """The epoch's progress after ``steps`` steps: ``start`` plus this rank's sums since, over all ranks."""
        rows = self.ranks.gather((loss, correct, seen))
        return {
            **start,
            "steps": steps,
            "loss": start["loss"] + sum(r[0] for r in rows),
            "correct": start["correct"] + sum(r[1] for r in rows),
            "seen": start["seen"] + sum(r[2] for r in rows),
        }

    def no_sync(self, skip: bool) -> Any:
        """DDP's ``no_sync`` for the micro-batches before a step's last (gradients are reduced once a step)."""
        return self.forward.no_sync() if skip and self.ranks.distributed else contextlib.nullcontext()  # type: ignore[operator]

    @torch.no_grad()
    def validate(self, val: ImageSet | None) -> dict[str, float]:
        if val is None or len(val) == 0:
            return {}
        self.net.eval()
        part = rank_part(range(len(val)), self.ranks.rank, self.ranks.world)  # each rank scores a contiguous part
        mine = ImageSet([val.paths[i] for i in part], val.labels[part])
        local = [
            self.net(pixels).float().cpu()
            for pixels, _ in plain_batches(
                mine, self.transform, self.plan.batch_size, self.loader_workers(-(-len(mine) // self.plan.batch_size))
            )
        ]
        parts = [chunk for chunks in self.ranks.gather(local) for chunk in chunks]
        logits = torch.cat(parts) if parts else torch.zeros(0, self.n_classes)
        return validation_scores(logits, val.labels, self.n_classes)

    def run_key(self, train: ImageSet, val: ImageSet | None, key: str) -> str:
        """What a checkpoint must match to be resumed: the plan, seed, data, initial weights and ``key``."""
        digest = hashlib.sha256(json.dumps([asdict(self.plan), self.seed, key]).encode())
        for images in (train, val):
            if images is not None:
                digest.update(json.dumps([str(p) for p in images.paths] + images.labels.tolist()).encode())
        for name, tensor in sorted(self.state().items()):
            digest.update(name.encode() + tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def save(
        self,
        path: Path,
        epoch: int,
        step: int,
        history: list[dict[str, float]],
        keeper: BestEpoch,
        run_key: str,
        partial: dict[str, Any] | None = None,
    ) -> None:
        """``epoch`` epochs done, ``step`` steps in all; ``partial``: the progress inside epoch ``epoch + 1``."""
        tensors = training_tensors(self.state(), self.optimizer, keeper.state)
        tensors.update(self.average.tensors())
        for rank, rng in enumerate(self.ranks.gather(torch.get_rng_state())):  # dropout's state on every rank
            tensors["rng.torch" if rank == 0 else f"rng.torch.{rank}"] = rng
        meta = {
            "epoch": epoch,
            "step": step,
            "history": history,
            "run_key": run_key,
            **best_metadata(keeper),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "param_groups": self.optimizer.state_dict()["param_groups"],
            "partial": partial,
        }
        if self.ranks.is_main:
            write_tensors(path, tensors, {"fewclip": json.dumps(meta)}, self_check=True)
        self.ranks.barrier()  # no rank runs ahead of a checkpoint it could be killed without

    def resume(
        self, path: Path, run_key: str
    ) -> tuple[int, int, list[dict[str, float]], BestEpoch, dict[str, Any] | None] | None:
        """Restore everything from a checkpoint of this very run; None (train from the start) otherwise."""
        saved = read_checkpoint(path, run_key, delete_damaged=self.ranks.is_main)
        if saved is None:
            return None
        tensors, meta = saved
        self.load(saved_part(tensors, "model"))
        restore_optimizer(self.optimizer, tensors, meta["param_groups"])
        self.scheduler.load_state_dict(meta["scheduler"])
        self.scaler.load_state_dict(meta["scaler"])
        rank = self.ranks.rank
        rng = tensors.get("rng.torch" if rank == 0 else f"rng.torch.{rank}")
        if rng is not None:
            torch.set_rng_state(rng)
        else:  # resumed with more ranks than it was saved by: this rank's dropout starts a fresh stream
            torch.manual_seed(self.seed + rank * 1_000_003 + meta["step"])
        keeper = restored_best(self.plan.select, meta, tensors)
        self.average = EpochAverage.restored(self.plan.epoch_weights, tensors)
        return meta["epoch"], meta["step"], meta["history"], keeper, meta.get("partial")
