"""CPU threads for torch's intra-op parallelism: ``runtime.threads``, else env ``FEWCLIP_THREADS``, else the
cores this process may use (its CPU affinity, capped by a container's CPU quota), shared among the processes
torchrun started on the machine.

The count is part of what a command computes: a reduction split over another number of threads rounds
differently, and training carries the difference on (the default captioning run's adapter: test CIDEr 2.06
with 1 thread, 2.00 with 2). So the default depends on the machine, never on its momentary load, and the same
command on the same machine repeats to the bit. (An earlier default left out the cores the load average said
were busy: a command started just after another took 1 thread, one started on an idle machine 2, and reruns
of one config differed.)

torch's own default is the machine's core count, which ignores CPU affinity and a container's quota; with more
threads than cores, runs collapse (a CoOp 1-shot unit took 313 s at torch's default versus 6.5 s with one
thread). Other work on the machine slows a run too (the default ``fewclip run`` on 2 cores with two busy
processes beside it took 303 s with 2 threads and 131 s with 1): ``busy_hint`` says so, and the user chooses.
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


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def free_cores(cores: int, load: float | None = None) -> int:
    """Of ``cores``, those not taken by other work: minus the 1-minute load average (read before this
    process starts computing, so it counts the others), rounded, never below 1."""
    load = load_average() if load is None else load
    if load is None:
        return cores
    return max(1, min(cores, cores - math.floor(load + 0.5)))


def chosen_threads(setting: int | None) -> int | None:
    """The thread count a user chose: the config's value, else ``FEWCLIP_THREADS``; None when neither is set."""
    if setting is not None:
        return setting
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{THREADS_ENV}={env!r}: expected a whole number of threads >= 1 (or unset it)")
        return int(env)
    return None


def local_processes() -> int:
    """The processes torchrun started on this machine (``LOCAL_WORLD_SIZE``), 1 outside torchrun."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(local) if local.isdigit() and int(local) > 0 else 1


def resolve_threads(setting: int | None) -> int:
    """The thread count to use: the one chosen (``chosen_threads``), else ``available_cores()`` shared out among
    the processes torchrun started on this machine. Never the load: see the module docstring."""
    chosen = chosen_threads(setting)
    return chosen if chosen is not None else max(1, available_cores() // local_processes())


def busy_hint(setting: int | None, threads: int, load: float | None = None) -> str | None:
    """When the thread count was not chosen and the load average says some of its cores are busy: a line saying
    fewer threads may run faster, and what that changes; else None. (The load may be fewclip's own last command:
    the line says what to try, it changes nothing.)"""
    load = load_average() if load is None else load
    if chosen_threads(setting) is not None or load is None:
        return None
    cores = available_cores()
    fewer = max(1, free_cores(cores, load) // local_processes())
    if fewer >= threads:
        return None
    return (
        f"the load average is {load:.1f} on {cores} cores: if other work keeps some busy, {THREADS_ENV}={fewer} (or "
        f"runtime.threads: {fewer}) may run faster, and its results then agree with a {threads}-thread run's to "
        f"float rounding, not bit for bit"
    )


def apply_threads(setting: int | None) -> int:
    """Set torch's intra-op threads from ``setting`` (see ``resolve_threads``); returns the count set."""
    import torch

    threads = resolve_threads(setting)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
