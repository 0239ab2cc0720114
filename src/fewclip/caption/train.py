"""Training a captioner: batched teacher forcing, AdamW + step decay, selection by a validation score, resume.

Each (image, caption) pair is one example; captions are tokenised once as BOS + tokens + EOS and
right-padded per batch (padding is masked out of attention and labelled -100, so it is out of the loss).
The learning rate drops by ``lr_gamma`` every ``lr_step_epochs`` epochs (``StepLR``, stepped at the end
of each epoch in the loop below). After every epoch the caller's ``val_score(model)`` (the pipeline
passes validation CIDEr) is recorded; the best epoch's trainable weights are kept and left in the model
at the end (ties: the earlier epoch).

With a ``checkpoint`` path, the trainable weights, AdamW's state, the scheduler, the history and the
best weights so far are written after every epoch as one self-checking safetensors file (tensors) with
JSON metadata (scalars), never pickle; a killed run resumes from it with the same result as an
uninterrupted one: each epoch's order and dropout are drawn from generators seeded by (seed, epoch).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from pydantic import Field
from fewclip.progress import epoch_bar

from fewclip.configbase import ConfigBlock
from fewclip.heads.artifacts import write_tensors
from fewclip.heads.base import check_loss
from fewclip.training.checkpoint import read_checkpoint, restore_optimizer, saved_part, training_tensors


class CaptionTrainConfig(ConfigBlock):
    """The reference recipe as defaults, with batches."""

    epochs: int = Field(10, ge=1, description="Passes over the training captions.")
    batch_size: int = Field(32, ge=1, description="(image, caption) pairs per step.")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay.")
    lr_step_epochs: int = Field(
        3, ge=1, description="Step decay: the rate is multiplied by lr_gamma every this many epochs."
    )
    lr_gamma: float = Field(0.5, gt=0, le=1, description="Step decay factor.")
    max_tokens: int = Field(
        32, ge=3, description="Longest tokenised caption, BOS and EOS included (longer ones are cut)."
    )
    cache_budget_mb: float = Field(
        2048,
        ge=0,
        description="Cache frozen encoder outputs on disk when they fit this many MB; otherwise encode every batch.",
    )


@dataclass
class CaptionTraining:
    """What training did: one history row per epoch, the selected epoch and its score."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None

    @property
    def seconds(self) -> float:
        return sum(row["seconds"] for row in self.history)


def caption_token_ids(tokenizer: Any, caption: str, max_tokens: int) -> list[int]:
    """BOS + the caption's tokens + EOS, the tokens cut so that the whole fits ``max_tokens``."""
    tokens = tokenizer(caption, add_special_tokens=False).input_ids[: max_tokens - 2]
    return [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]


def pad_batch(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, key_mask, labels), each (B, longest): right padding with ``pad_id``, mask 0, label -100."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def run_key(
    model: Any, settings: CaptionTrainConfig, seed: int, examples: Sequence[tuple[str, str]], score_name: str | None
) -> str:
    """What a checkpoint must match to be resumed: recipe, seed, model config, data, initial weights."""
    digest = hashlib.sha256(
        json.dumps(
            [
                settings.model_dump(mode="json"),
                seed,
                model.config.model_dump(mode="json"),
                model.seed,
                list(map(list, examples)),
                score_name,
            ]
        ).encode()
    )
    for name, tensor in sorted(model.trainable_state().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    done: CaptionTraining,
    best_state: dict[str, torch.Tensor] | None,
    key: str,
) -> None:
    """Tensors in safetensors (weights, AdamW moments and steps, best weights); scalars in its JSON metadata.
    One atomic rename commits both, so tensors and history always belong to the same epoch."""
    tensors = training_tensors(model.trainable_state(), optimizer, best_state)
    meta = {
        "run_key": key,
        "history": done.history,
        "best_epoch": done.best_epoch,
        "best_score": done.best_score,
        "scheduler": scheduler.state_dict(),
        "lrs": [group["lr"] for group in optimizer.param_groups],
    }
    write_tensors(path, tensors, {"fewclip": json.dumps(meta)}, self_check=True)


def load_checkpoint(
    path: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, key: str
) -> tuple[CaptionTraining, dict[str, torch.Tensor] | None] | None:
    """Restore a checkpoint of this run into model, optimizer and scheduler; None when there is none, it
    belongs to another run, or it is damaged (deleted with a warning: training starts over)."""
    saved = read_checkpoint(path, key, "caption training checkpoint", changed="recipe, data, model or seed")
    if saved is None:
        return None
    tensors, meta = saved
    model.load_trainable_state(saved_part(tensors, "model"))
    restore_optimizer(optimizer, tensors)
    for group, lr in zip(optimizer.param_groups, meta["lrs"]):
        group["lr"] = lr
    scheduler.load_state_dict(meta["scheduler"])
    best = saved_part(tensors, "best") or None
    return CaptionTraining(meta["history"], meta["best_epoch"], meta["best_score"]), best


def train_captioner(
    model: Any,
    examples: Sequence[tuple[str, str]],
    encoder_tokens: Callable[[Sequence[str]], torch.Tensor],
    settings: CaptionTrainConfig = CaptionTrainConfig(),
    seed: int = 0,
    val_score: Callable[[Any], float] | None = None,
    score_name: str = "val_cider",
    checkpoint: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = False,
) -> CaptionTraining:
    """Train ``model``'s trainable parameters on (image sha1, clean caption) ``examples``.

    ``encoder_tokens(sha1s)`` gives (n, T, width) encoder outputs (an ``EncoderTokens``). History rows:
    epoch, train_loss, lr, ``score_name`` (when ``val_score`` is given) and seconds. The best epoch's
    weights (the last epoch's without ``val_score``) are left in the model.
    """
    params = list(model.trainable_parameters().values())
    if not params:
        raise ValueError(f"caption method {model.config.method!r} has nothing to train; it is evaluated as built")
    sequences = [caption_token_ids(model.tokenizer, caption, settings.max_tokens) for _, caption in examples]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step_epochs, gamma=settings.lr_gamma)
    done, best_state = CaptionTraining(), None
    key = run_key(model, settings, seed, examples, score_name if val_score else None) if checkpoint else ""
    if checkpoint is not None and (resumed := load_checkpoint(checkpoint, model, optimizer, scheduler, key)):
        done, best_state = resumed
    bar = epoch_bar(len(done.history), settings.epochs, "caption epochs", progress)
    for epoch in bar:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loss = _train_epoch(model, optimizer, examples, sequences, encoder_tokens, settings.batch_size, seed, epoch)
        check_loss(loss, epoch + 1, lr)
        scheduler.step()
        row = {"epoch": float(epoch + 1), "train_loss": loss, "lr": lr}
        if val_score is not None:
            model.eval()
            row[score_name] = float(val_score(model))
            if done.best_score is None or row[score_name] > done.best_score:
                done.best_epoch, done.best_score, best_state = epoch + 1, row[score_name], model.trainable_state()
        row["seconds"] = time.perf_counter() - started
        done.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, done, best_state, key)
    if best_state is not None:
        model.load_trainable_state(best_state)
    else:
        done.best_epoch = len(done.history)
    return done


def _train_epoch(
    model: Any,
    optimizer: torch.optim.Optimizer,
    examples: Sequence[tuple[str, str]],
    sequences: Sequence[list[int]],
    encoder_tokens: Callable[[Sequence[str]], torch.Tensor],
    batch_size: int,
    seed: int,
    epoch: int,
) -> float:
    """One pass in an order drawn from (seed, epoch); dropout draws from the same seed. Mean example loss."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    cuda = [model.device_] if model.device_.type == "cuda" else []
    total = 0.0
    model.train()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed * 100003 + epoch)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, mask, labels = pad_batch([sequences[i] for i in batch], model.eos_id)
            loss = model.loss(encoder_tokens([examples[i][0] for i in batch]), ids, mask, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
    model.eval()
    return total / len(examples)
