"""Many processes on PyTorch's own engine: ``torchrun --nproc-per-node N -m fewclip run CONFIG``.

torchrun (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``PORT``)
starts N copies of the command; ``start`` joins them into one process group (``nccl`` when the model runs
on CUDA, ``gloo`` otherwise) and pins each rank to GPU ``LOCAL_RANK``. What each stage does with the
ranks (see ``fewclip.runner.pipeline``):

- prepare: rank 0 writes the splits, the others wait;
- features: every image has one owner rank (its position modulo the world size), which encodes it and
  writes its own shards into the content-addressed cache; all ranks wait for all, then read them;
- train: units that train on cached features are dealt out round-robin, one rank each; units whose head
  tunes the encoders are trained by all ranks together with ``DistributedDataParallel``;
- evaluate and report: rank 0 alone. Every file is written by exactly one rank.

Without those variables (a plain ``fewclip run``) everything here is the one-process identity.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT_ENV = "FEWCLIP_DIST_TIMEOUT_MIN"  # how long a rank waits for the others at a collective
DEFAULT_TIMEOUT_MIN = 24 * 60  # a rank waits while others train their units; torchrun stops the job if one dies


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owns(self, index: int) -> bool:
        """Whether item ``index`` of a list dealt out round-robin is this rank's."""
        return index % self.world == self.rank

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (round-robin: item i belongs to rank i mod world)."""
        return [item for index, item in enumerate(items) if self.owns(index)]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Ranks()


def env_ranks() -> Ranks:
    """The ranks torchrun describes in the environment (``SINGLE`` when it is not set)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as err:
        raise ValueError(
            f"torchrun's RANK / WORLD_SIZE / LOCAL_RANK are not whole numbers ({err}); "
            "start fewclip with torchrun, or unset them for one process"
        ) from err
    if world <= 1:
        return SINGLE
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return Ranks(rank, world, local_rank, max(local_world, 1))


def start(device: str = "auto") -> Ranks:
    """Join the torchrun job (once per process) and return this rank; ``SINGLE`` outside torchrun.

    ``device`` is the config's ``model.device``: CUDA (``auto`` with GPUs, ``cuda``) uses ``nccl`` and pins
    the rank to GPU ``LOCAL_RANK``; anything else uses ``gloo`` on the CPU."""
    ranks = env_ranks()
    if not ranks.distributed:
        return ranks
    import torch.distributed as dist

    if dist.is_initialized():
        return ranks
    cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if cuda:
        torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
    minutes = int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=minutes))
    log.info(
        "rank %d of %d (local %d of %d) joined the job on %s",
        ranks.rank,
        ranks.world,
        ranks.local_rank,
        ranks.local_world,
        "nccl" if cuda else "gloo",
    )
    return ranks


def peer_lost(error: BaseException, ranks: Ranks) -> bool:
    """Whether ``error`` is a collective failing because another rank of the job died or gave up."""
    if not ranks.distributed:
        return False
    import torch.distributed as dist

    lost = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted", "timed out")
    return isinstance(error, dist.DistError) or any(text in str(error) for text in lost)


def stop() -> None:
    """Leave the process group (at the end of a command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
