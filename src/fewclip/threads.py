"""CPU threads for torch's intra-op parallelism: ``runtime.threads``, else env ``FEWCLIP_THREADS``, else the
cores this process may actually use that other processes are not already keeping busy.

torch's own default is the machine's core count, which ignores CPU affinity, a container's CPU quota and
other work on the machine; with more threads than free cores, contended runs collapse (a CoOp 1-shot unit
took 313 s at torch's default versus 6.5 s with one thread at the same load; the default ``fewclip run``
on 2 cores with two busy processes beside it took 303 s with 2 threads and 131 s with 1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

THREADS_ENV = "FEWCLIP_THREADS"
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def cgroup_cpu_limit(cpu_max: Path = CPU_MAX) -> int | None:
    """Cores allowed by the cgroup's CPU quota (rounded up), or None when unlimited or unreadable."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def available_cores(cpu_max: Path = CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota if one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(cpu_max)
    return max(1, min(cores, limit) if limit else cores)


def free_cores(cores: int, load: float | None = None) -> int:
    """Of ``cores``, those not taken by other work: minus the 1-minute load average (read before this
    process starts computing, so it counts the others), rounded, never below 1."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return cores
    return max(1, min(cores, cores - math.floor(load + 0.5)))


def resolve_threads(setting: int | None) -> int:
    """The thread count to use: the config's value, else ``FEWCLIP_THREADS``, else the free cores among
    ``available_cores()`` (see ``free_cores``), shared out among the processes torchrun started on this
    machine (``LOCAL_WORLD_SIZE``)."""
    if setting is not None:
        return setting
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{THREADS_ENV}={env!r}: expected a whole number of threads >= 1 (or unset it)")
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, free_cores(available_cores()) // (int(local) if local.isdigit() and int(local) > 0 else 1))


def apply_threads(setting: int | None) -> int:
    """Set torch's intra-op threads from ``setting`` (see ``resolve_threads``); returns the count set."""
    import torch

    threads = resolve_threads(setting)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
