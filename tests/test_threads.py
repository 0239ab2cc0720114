"""runtime.threads / FEWCLIP_THREADS set torch's intra-op threads; the default is the cores the process may use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip import threads
from fewclip.runner.cli import main


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_the_affinity_capped_by_the_cgroup_quota(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    unlimited, quota = tmp_path / "unlimited", tmp_path / "quota"
    unlimited.write_text("max 100000\n")
    quota.write_text("150000 100000\n")  # 1.5 CPUs -> 2 threads
    assert threads.cgroup_cpu_limit(unlimited) is None and threads.cgroup_cpu_limit(quota) == 2
    assert threads.cgroup_cpu_limit(tmp_path / "absent") is None
    assert threads.available_cores(unlimited) == cores
    assert threads.available_cores(quota) == min(cores, 2)


def test_config_beats_env_which_beats_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 7)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.0, 0.0))  # an idle machine
    assert threads.resolve_threads(None) == 7
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.resolve_threads(None) == 3 and threads.resolve_threads(2) == 2
    monkeypatch.setenv(threads.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="FEWCLIP_THREADS='many': expected a whole number"):
        threads.resolve_threads(None)


@pytest.mark.parametrize(
    "setting, env, expected", [("runtime.threads=1", None, 1), (None, "2", 2), ("runtime.threads=3", "2", 3)]
)
def test_a_stage_command_sets_torch_threads(
    setting: str | None,
    env: str | None,
    expected: int,
    make_config: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if env:
        monkeypatch.setenv(threads.THREADS_ENV, env)
    torch.set_num_threads(5 if expected != 5 else 4)
    config = tmp_path / "c.yaml"
    config.write_text(make_config().to_yaml())
    assert main(["-q", "prepare", str(config), *([setting] if setting else [])]) == 0
    assert torch.get_num_threads() == expected


def test_threads_below_one_are_refused(make_config: Callable[..., Any]) -> None:
    with pytest.raises(Exception, match="runtime.threads"):
        make_config("runtime.threads=0")


def test_default_leaves_the_cores_other_processes_keep_busy() -> None:
    assert [threads.free_cores(2, load) for load in (0.0, 0.49, 0.5, 1.2, 1.6, 7.0)] == [2, 2, 1, 1, 1, 1]
    assert threads.free_cores(8, 2.4) == 6 and threads.free_cores(8, 2.6) == 5
