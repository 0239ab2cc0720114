"""The training loop of heads that tune inside the encoders: AdamW + cosine over a fixed number of
optimiser steps, on augmented images, validated and checkpointed at every epoch end.

A checkpoint (safetensors, no pickle) holds the trainable weights, the optimiser's moments, the best
epoch's weights and, in its JSON metadata, the epoch, step, history, scheduler, grad scaler, optimiser
groups and torch RNG (dropout). The data order and augmentation of an epoch are functions of (seed, epoch)
(``image_batches``), so resuming at an epoch end replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..backbones.device import autocast_for
from ..backbones.preprocess import ImageTransform
from ..metrics import summarize
from .artifacts import DamagedArtifact, read_tensors, write_tensors
from .base import ImageSet
from .image_batches import epoch_batches, plain_batches
from .selection import BestEpoch, SelectRule, Selection

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
    select: SelectRule
    augment: bool = True
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)


class EncoderTrainer:
    """Trains the ``requires_grad`` parameters of ``model`` with ``logits_fn(pixels) -> (n, C)``."""

    def __init__(self, model: nn.Module, logits_fn: Callable[[torch.Tensor], torch.Tensor], transform: ImageTransform,
                 plan: TrainPlan, seed: int, workers: int, n_classes: int, device: torch.device) -> None:
        self.model, self.logits_fn, self.transform, self.plan = model, logits_fn, transform, plan
        self.seed, self.workers, self.n_classes, self.device = seed, workers, n_classes, device
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=plan.lr, weight_decay=plan.weight_decay,
                                           betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, plan.iterations, eta_min=plan.min_lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16")

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state[name].to(param.device, param.dtype))

    def fit(self, train: ImageSet, val: ImageSet | None, checkpoint: Path | None, key: str,
            on_epoch: Callable[[dict[str, float]], None] | None = None) -> tuple[list[dict[str, float]], Selection]:
        """Train for ``plan.iterations`` steps; leave the selected epoch's weights in the model."""
        plan = self.plan
        steps_per_epoch = -(-len(train) // plan.batch_size)
        epochs = -(-plan.iterations // steps_per_epoch)
        run_key = self.run_key(train, val, key)
        history: list[dict[str, float]] = []
        keeper = BestEpoch(plan.select)
        step, start_epoch, partial = 0, 0, None
        resumed = self.resume(checkpoint, run_key) if checkpoint is not None else None
        if resumed is not None:
            start_epoch, step, history, keeper, partial = resumed
        for epoch in range(start_epoch, epochs):
            epoch_start = step - (partial["steps"] if partial else 0)
            steps = min(steps_per_epoch, plan.iterations - epoch_start)

            def at_step(progress: dict[str, Any], epoch: int = epoch, epoch_start: int = epoch_start,
                        steps: int = steps) -> None:
                every = plan.checkpoint_every
                if checkpoint is not None and every and progress["steps"] % every == 0 and progress["steps"] < steps:
                    self.save(checkpoint, epoch, epoch_start + progress["steps"], history, keeper, run_key, progress)

            row = self.train_epoch(train, epoch, steps, partial, at_step)
            step, partial = epoch_start + steps, None
            row.update(self.validate(val))
            keeper.observe(epoch + 1, row, self.state)
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if checkpoint is not None:
                self.save(checkpoint, epoch + 1, step, history, keeper, run_key)
        selection, kept = keeper.choose(history, val.labels if val is not None else None, self.n_classes)
        if kept is not None:
            self.load(kept)
        return history, selection

    def train_epoch(self, train: ImageSet, epoch: int, steps: int, partial: dict[str, Any] | None = None,
                    at_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, float]:
        """``steps`` optimiser steps over the epoch's batches, from ``partial`` (a checkpoint taken inside the
        epoch: the steps done and the running sums) if given; returns its history row (before validation)."""
        plan = self.plan
        micro = plan.batch_size // plan.accumulate
        progress = dict(partial) if partial else {"steps": 0, "loss": 0.0, "correct": 0, "seen": 0,
                                                  "lr": self.scheduler.get_last_lr()[0]}
        batches = epoch_batches(train, self.transform, self.seed, epoch, micro, self.workers, plan.augment,
                                skip=progress["steps"] * plan.batch_size)
        self.model.train()
        total_loss, correct, seen, lr = progress["loss"], progress["correct"], progress["seen"], progress["lr"]
        for _ in range(progress["steps"], steps):
            self.optimizer.zero_grad(set_to_none=True)
            group = [batch for _, batch in zip(range(plan.accumulate), batches)]
            images = sum(len(labels) for _, labels in group)
            for pixels, labels in group:
                with autocast_for(plan.precision, self.device):
                    logits = self.logits_fn(pixels)
                loss = nn.functional.cross_entropy(logits.float(), labels.to(self.device))
                self.scaler.scale(loss * (len(labels) / images)).backward()  # the mean over the step's images
                total_loss += float(loss.detach()) * len(labels)
                correct += int((logits.argmax(-1).cpu() == labels).sum())
                seen += len(labels)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            progress.update(steps=progress["steps"] + 1, loss=total_loss, correct=correct, seen=seen)
            if at_step is not None:
                at_step(progress)
        return {"epoch": float(epoch + 1), "lr": lr, "train_loss": total_loss / max(seen, 1),
                "train_accuracy": correct / max(seen, 1)}

    @torch.no_grad()
    def validate(self, val: ImageSet | None) -> dict[str, float]:
        if val is None or len(val) == 0:
            return {}
        self.model.eval()
        logits = torch.cat([self.logits_fn(pixels).float().cpu()
                            for pixels, _ in plain_batches(val, self.transform, self.plan.batch_size, self.workers)])
        scores = summarize(val.labels.numpy(), logits.argmax(-1).numpy(), self.n_classes)
        return {"val_loss": float(nn.functional.cross_entropy(logits, val.labels)),
                "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"]}

    def run_key(self, train: ImageSet, val: ImageSet | None, key: str) -> str:
        """What a checkpoint must match to be resumed: the plan, seed, data, initial weights and ``key``."""
        digest = hashlib.sha256(json.dumps([asdict(self.plan), self.seed, key]).encode())
        for images in (train, val):
            if images is not None:
                digest.update(json.dumps([str(p) for p in images.paths] + images.labels.tolist()).encode())
        for name, tensor in sorted(self.state().items()):
            digest.update(name.encode() + tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: Path, epoch: int, step: int, history: list[dict[str, float]], keeper: BestEpoch,
             run_key: str, partial: dict[str, Any] | None = None) -> None:
        """``epoch`` epochs done, ``step`` steps in all; ``partial``: the progress inside epoch ``epoch + 1``."""
        tensors = {f"model.{n}": v for n, v in self.state().items()}
        optim = self.optimizer.state_dict()
        for index, state in optim["state"].items():
            for name, value in state.items():
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().clone()
        if keeper.state is not None:
            tensors.update({f"best.{n}": v for n, v in keeper.state.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"epoch": epoch, "step": step, "history": history, "run_key": run_key,
                "best_epoch": keeper.epoch, "best_score": list(keeper.score) if keeper.score else None,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "param_groups": optim["param_groups"], "partial": partial}
        write_tensors(path, tensors, {"fewclip": json.dumps(meta)}, self_check=True)

    def resume(self, path: Path,
               run_key: str) -> tuple[int, int, list[dict[str, float]], BestEpoch, dict[str, Any] | None] | None:
        """Restore everything from a checkpoint of this very run; None (train from the start) otherwise."""
        if not path.is_file():
            return None
        try:
            tensors, metadata = read_tensors(path, what="checkpoint")
            meta: Any = json.loads(metadata.get("fewclip", "{}"))
        except (DamagedArtifact, ValueError) as err:
            log.warning("discarding checkpoint %s (%s); training this unit starts over", path, err)
            path.unlink(missing_ok=True)
            return None
        if not isinstance(meta, dict) or meta.get("run_key") != run_key:
            log.info("ignoring checkpoint %s: it belongs to another run (settings, data or initialisation changed)", path)
            return None
        self.load({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, field = name.split(".", 2)
                state.setdefault(int(index), {})[field] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.scaler.load_state_dict(meta["scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        keeper = BestEpoch(self.plan.select)
        if meta["best_epoch"] is not None:
            keeper = BestEpoch(self.plan.select, meta["best_epoch"], tuple(meta["best_score"]),
                               {k[5:]: v for k, v in tensors.items() if k.startswith("best.")})
        return meta["epoch"], meta["step"], meta["history"], keeper, meta.get("partial")
