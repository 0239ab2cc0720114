"""Images for heads that train inside the encoders: decoded and augmented in DataLoader workers.

Every random choice is a function of (seed, epoch, position): the order of an epoch is a permutation drawn
from a generator seeded by (seed, epoch), and the augmentation of one image from a numpy generator seeded
by (seed, epoch, index). A run therefore sees the same batches whatever the number of workers, and a
resumed run the same batches as an uninterrupted one.

With several ranks (``fewclip.distributed``), every micro-batch of that global order is cut into ``world``
contiguous parts and rank r loads part r only, so the ranks together see exactly the images, crops and
flips of a one-process run (``epoch_batches``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fewclip.backbones.preprocess import PAPERS_AUGMENTATION, Augmentation, ImageTransform, augment_view
from fewclip.data.images import read_image
from fewclip.distributed import SINGLE, Ranks
from fewclip.heads.base import ImageSet


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order epoch ``epoch`` (0-based) visits the ``n`` images in."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class AugmentedImages(Dataset[tuple[torch.Tensor, int]]):
    """Item i of epoch e: (pixels (3, H, W) of a random resized crop + flip of image i, its label)."""

    def __init__(
        self,
        images: ImageSet,
        transform: ImageTransform,
        seed: int,
        epoch: int,
        augment: Augmentation | bool | None = True,
    ) -> None:
        self.images, self.transform, self.seed, self.epoch = images, transform, seed, epoch
        # True: the papers' crop + flip; an Augmentation: those settings; False or None: the model's own preprocessing
        self.augmentation = PAPERS_AUGMENTATION if augment is True else (augment or None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_image(self.images.paths[index])
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            pixels = augment_view(self.transform, rng, image, self.augmentation)
        else:
            pixels = self.transform(image)
        return torch.from_numpy(pixels), int(self.images.labels[index])


def worker_context() -> multiprocessing.context.BaseContext:
    """Where DataLoader workers come from: a fork server, started once per process with this module imported.

    Forking the training process itself is unsafe once it has other threads (torch.distributed's, queue feeders,
    tqdm's monitor): a worker forked while one of them holds an interpreter lock starts with that lock held and
    hangs forever in CPython's after-fork clean-up (seen under torchrun: a rank waited on a validation worker
    stuck in ``PyOS_AfterFork_Child``). The fork server is single-threaded; its forks are as cheap as a fork and
    get the dataset pickled (paths, labels and the transform's settings)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def batch_loader(
    images: ImageSet,
    transform: ImageTransform,
    seed: int,
    epoch: int,
    augment: Augmentation | bool | None,
    batches: list[list[int]],
    workers: int,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader yielding (pixels, labels) for each list of image indices in ``batches``, decoded (and
    augmented as epoch ``epoch`` of ``seed``) in ``workers`` worker processes."""
    # its own generator: the workers' seeds never draw from torch's global RNG, which dropout replays on resume
    return DataLoader(
        AugmentedImages(images, transform, seed, epoch, augment),
        batch_sampler=batches,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
        multiprocessing_context=worker_context() if workers else None,
    )


def chunks(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """``order`` cut into batches of ``batch_size`` (the last may be short)."""
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def rank_part(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s contiguous part of a global micro-batch (sizes differ by at most one; may be empty)."""
    size, extra = divmod(len(indices), world)
    start = rank * size + min(rank, extra)
    return list(indices[start : start + size + (rank < extra)])


PAD_LABEL = -100  # cross_entropy's ignore_index: an image that counts for nothing


def epoch_batches(
    images: ImageSet,
    transform: ImageTransform,
    seed: int,
    epoch: int,
    batch_size: int,
    workers: int,
    augment: Augmentation | bool | None = True,
    shuffle: bool = True,
    skip: int = 0,
    stop: int | None = None,
    ranks: Ranks = SINGLE,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(pixels (b, 3, H, W), labels (b,), the global micro-batch size) batches of one epoch for this rank.

    The global micro-batches are ``batch_size`` images of ``epoch_order`` (``shuffle``; else in order) after
    ``skip`` and before ``stop`` (resuming inside an epoch; an epoch that drops its last partial step uses the
    order's first ``stop`` images, the same ones on every rank and in a resumed run); the last may be short.
    Each of ``ranks.world`` ranks loads its part of each (``rank_part``). When this rank's part of one is empty
    (a short last batch), it gets the batch's first image labelled ``PAD_LABEL``: its loss and accuracy count
    for nothing, but the rank still runs forward and backward, so DDP's gradient reduction has every rank's
    hooks."""
    order = epoch_order(seed, epoch, len(images)) if shuffle else list(range(len(images)))
    steps = chunks(order[skip:stop], batch_size)
    parts = [rank_part(chunk, ranks.rank, ranks.world) for chunk in steps]
    loader = batch_loader(
        images, transform, seed, epoch, augment, [part or chunk[:1] for chunk, part in zip(steps, parts)], workers
    )
    for chunk, part, (pixels, labels) in zip(steps, parts, loader):
        yield pixels, labels if part else torch.full_like(labels, PAD_LABEL), len(chunk)


def plain_batches(
    images: ImageSet, transform: ImageTransform, batch_size: int, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The images in order, with the model's own preprocessing (no augmentation): validation and test."""
    for pixels, labels, _ in epoch_batches(images, transform, 0, 0, batch_size, workers, False, shuffle=False):
        yield pixels, labels
