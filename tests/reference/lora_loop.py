"""The training loop of CLIP-LoRA's ``lora.py`` ``run_lora``, which CLIP-SVD's ``train.py`` ``run_training``
repeats line for line, re-implemented from reading both: AdamW (betas 0.9/0.999) over the trainable tensors, a
cosine from lr to 1e-6 over ``total_iters`` iterations stepped after every one, each iteration the
cross-entropy of ``model.logits`` (the class texts re-encoded, the batch's images), epochs over the loader's
batches (``drop_last=False``: the last partial batch trains) until the iteration count is reached (``break``
inside the last epoch)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch.nn import functional as F


class TunedReference(Protocol):
    """A reference model: its trainable tensors, its logits, and a training flag (LoRA's dropout reads it)."""

    training: bool

    def parameters(self) -> list[torch.Tensor]: ...

    def logits(self, token_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor: ...


def run_lora_loop(
    model: TunedReference,
    total_iters: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    orders: list[list[int]],
) -> list[float]:
    """Train ``model`` on ``inputs`` = (class token ids, pixels, labels); ``orders[e]`` is epoch e's shuffled
    order. Returns the rate each epoch starts at; leaves ``model.training`` False."""
    token_ids, pixels, labels = inputs
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=weight_decay, betas=(0.9, 0.999), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_iters, eta_min=1e-6)
    count_iters, epoch, epoch_rates = 0, 0, []
    while count_iters < total_iters:
        model.training = True
        epoch_rates.append(scheduler.get_last_lr()[0])
        order = orders[epoch]
        for batch in [order[i : i + batch_size] for i in range(0, len(order), batch_size)]:  # drop_last=False
            logits = model.logits(token_ids, pixels[batch])  # the texts re-encoded every iteration
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            count_iters += 1
            if count_iters == total_iters:
                break
        epoch += 1
    model.training = False
    return epoch_rates
