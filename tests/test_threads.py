"""runtime.threads / FEWCLIP_THREADS set torch's intra-op threads; the default is the cores the process may use,
whatever the load; a run directory notes the count its commands used."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip import threads
from fewclip.runner.cli import main
from fewclip.runner.config import load_config
from fewclip.runner.layout import RunFiles, run_root


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


def test_the_default_does_not_follow_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # The count changes what a run computes, so a busy machine must not change it: a command started just after
    # another (load ~1 on 2 cores) once took 1 thread and an idle one 2, and reruns of one config differed.
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    chosen = set()
    for load in (0.0, 0.6, 1.2, 1.9, 7.0):
        monkeypatch.setattr(threads.os, "getloadavg", lambda load=load: (load, load, load))
        chosen.add(threads.resolve_threads(None))
    assert chosen == {2}


def test_a_busy_machine_gets_a_hint_not_another_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    hint = threads.busy_hint(None, 2, load=1.2)
    assert hint is not None and "FEWCLIP_THREADS=1" in hint and "load average is 1.2 on 2 cores" in hint
    assert "2-thread run's to float rounding" in hint
    assert threads.busy_hint(None, 2, load=0.3) is None  # idle
    assert threads.busy_hint(1, 1, load=1.9) is None  # chosen in the config
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.busy_hint(None, 2, load=1.9) is None  # chosen in the environment
    assert [threads.free_cores(2, load) for load in (0.0, 0.49, 0.5, 1.2, 1.6, 7.0)] == [2, 2, 1, 1, 1, 1]
    assert threads.free_cores(8, 2.4) == 6 and threads.free_cores(8, 2.6) == 5


def test_a_run_directory_notes_its_count_and_another_count_is_warned(
    make_config: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(make_config().to_yaml())
    marker = RunFiles(run_root(load_config(config))).marker

    def prepare(count: str) -> list[str]:
        monkeypatch.setenv(threads.THREADS_ENV, count)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fewclip"):
            assert main(["prepare", str(config)]) == 0
        return [r.getMessage() for r in caplog.records if "CPU thread" in r.getMessage()]

    assert prepare("2") == [] and json.loads(marker.read_text())["threads"] == 2
    assert prepare("2") == []  # the same count: nothing to say
    (warning,) = prepare("1")
    assert "last computed with 2 CPU threads, this command uses 1" in warning and "not bit for bit" in warning
    assert json.loads(marker.read_text())["threads"] == 1 and prepare("1") == []
    marker.write_text("")  # an adopted older run's empty marker: noted from now on
    assert prepare("2") == [] and json.loads(marker.read_text())["threads"] == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes differ from one process's run anyway
    assert prepare("1") == [] and json.loads(marker.read_text())["processes"] == 2
