"""How a torchrun job's ranks share an encoder-tuning step's images (training/image_batches.epoch_batches with ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.backbones.preprocess import ImageTransform
from fewclip.heads.base import ImageSet
from fewclip.data.images import read_image as read
from fewclip.distributed import Ranks
from fewclip.training.image_batches import PAD_LABEL, epoch_batches, epoch_order, rank_part


def images(folder: Path, n: int) -> ImageSet:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(paths[-1])
    return ImageSet(paths, torch.arange(n) % 3)


def test_rank_parts_cover_each_batch_once() -> None:
    assert [rank_part(range(5), r, 2) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [rank_part([7], r, 2) for r in range(2)] == [[7], []]
    assert [rank_part(range(8), r, 3) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_ranks_together_see_the_one_process_batches(tmp_path: Path) -> None:
    data, transform = images(tmp_path, 9), ImageTransform(resize=16, crop=(16, 16))
    whole: list[Any] = [(x, y) for x, y, _ in epoch_batches(data, transform, 5, 2, 4, 0)]  # 4, 4, 1 images
    parts = [list(epoch_batches(data, transform, 5, 2, 4, 0, ranks=Ranks(rank, 2))) for rank in range(2)]
    assert [count for _, _, count in parts[0]] == [4, 4, 1] == [count for _, _, count in parts[1]]
    for (pixels, labels), first, second in list(zip(whole, *parts))[:2]:
        assert torch.equal(torch.cat([first[0], second[0]]), pixels)  # same crops and flips, same order
        assert torch.equal(torch.cat([first[1], second[1]]), labels)
    (pixels, labels), first, second = whole[2], parts[0][2], parts[1][2]
    assert torch.equal(first[0], pixels) and torch.equal(first[1], labels)  # the last image is rank 0's
    assert torch.equal(second[0], pixels) and second[1].tolist() == [PAD_LABEL]  # rank 1: a copy that counts nil
    skipped = list(epoch_batches(data, transform, 5, 2, 4, 0, skip=4, ranks=Ranks(1, 2)))  # resuming after one step
    assert torch.equal(skipped[0][0], parts[1][1][0])


def test_a_dropped_last_step_is_the_same_images_on_every_rank(tmp_path: Path) -> None:
    """Dassl's drop_last in the encoder trainer: 9 images in steps of 4 (two micro-batches of 2) keep the
    order's first 8 (``stop``): both ranks drop the same tail, and a resumed epoch sees the same batches."""
    data, transform = images(tmp_path, 9), ImageTransform(resize=16, crop=(16, 16))
    whole: list[Any] = [
        (x, y) for x, y, _ in epoch_batches(data, transform, 5, 2, 2, 0)
    ]  # micro-batches of 2, 2, 2, 2, 1
    parts = [list(epoch_batches(data, transform, 5, 2, 2, 0, stop=8, ranks=Ranks(rank, 2))) for rank in range(2)]
    assert [len(part) for part in parts] == [4, 4]  # the short micro-batch of the partial step is gone everywhere
    for (pixels, labels), first, second in zip(whole[:4], *parts):
        assert torch.equal(torch.cat([first[0], second[0]]), pixels) and first[2] == second[2] == 2
        assert torch.equal(torch.cat([first[1], second[1]]), labels)
    assert sum(len(part[1]) for rank in parts for part in rank) == 8  # the order's last image is the one left out
    for rank in range(2):  # resumed after the first step (4 images)
        resumed = list(epoch_batches(data, transform, 5, 2, 2, 0, skip=4, stop=8, ranks=Ranks(rank, 2)))
        assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(resumed, parts[rank][2:]))


def test_the_augmentation_is_configurable(tmp_path: Path) -> None:
    from fewclip.backbones.preprocess import Augmentation
    from fewclip.heads.encoders.clip_lora import ClipLoraConfig
    from fewclip.training.images_loop import TrainPlan

    data, transform = images(tmp_path, 4), ImageTransform(resize=16, crop=(16, 16))

    def first(augment: Any) -> torch.Tensor:
        return next(iter(epoch_batches(data, transform, 5, 0, 4, 0, augment)))[0]

    papers = first(True)
    assert torch.equal(first(Augmentation()), papers)  # True is the papers' crop + flip
    assert torch.equal(
        first(False),
        torch.stack([torch.from_numpy(transform(read(p))) for p in [data.paths[i] for i in epoch_order(5, 0, 4)]]),
    )
    whole, unflipped = first(Augmentation(scale=(1.0, 1.0), ratio=(1.2, 1.2), flip=0.0)), first(Augmentation(flip=0.0))
    assert not torch.equal(whole, papers) and not torch.equal(unflipped, papers)
    flips = [torch.equal(u, p) or torch.equal(u.flip(-1), p) for u, p in zip(unflipped, papers)]
    assert all(flips) and not all(torch.equal(u, p) for u, p in zip(unflipped, papers))  # same crops, unflipped
    plan = TrainPlan(1, 4, 1, 1e-3, 0.0, 0.0, "fp32", "last", crop_scale=(0.5, 0.9), flip=False)
    assert plan.augmentation() == Augmentation(scale=(0.5, 0.9), flip=0.0)
    assert TrainPlan(1, 4, 1, 1e-3, 0.0, 0.0, "fp32", "last", augment=False).augmentation() is None
    with pytest.raises(ValueError, match=r"crop_scale \[0.9, 0.5\]: give \[low, high\]"):
        ClipLoraConfig(crop_scale=(0.9, 0.5))


def test_workers_come_from_a_fork_server_not_a_fork_of_the_training_process(tmp_path: Path) -> None:
    """Forking a process with other threads can hang a worker in CPython's after-fork clean-up."""
    from fewclip.training.image_batches import batch_loader

    images = ImageSet([tmp_path / "x.png"], torch.tensor([0]))
    loader = batch_loader(images, None, 0, 0, False, [[0]], workers=2)  # type: ignore[arg-type]
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    assert batch_loader(images, None, 0, 0, False, [[0]], workers=0).multiprocessing_context is None
