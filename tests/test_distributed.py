"""The one-process side of fewclip.distributed: reading torchrun's environment, dealing out work, threads, and
the commands that refuse torchrun."""

from __future__ import annotations

import pytest

from fewclip.runner.cli import main
from fewclip.distributed import SINGLE, Ranks, env_ranks
from fewclip.threads import resolve_threads


def test_env_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert env_ranks() == SINGLE and not SINGLE.distributed and SINGLE.is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert env_ranks() == Ranks(3, 4, 1, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 is outside WORLD_SIZE=4"):
        env_ranks()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="not whole numbers"):
        env_ranks()


def test_work_is_dealt_round_robin() -> None:
    units = list("abcdefg")
    shares = [Ranks(rank, 3).mine(units) for rank in range(3)]
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert SINGLE.mine(units) == units and SINGLE.gather(5) == [5] and SINGLE.share("x") == "x"


def test_threads_are_shared_by_the_local_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    import fewclip.threads

    monkeypatch.delenv("FEWCLIP_THREADS", raising=False)
    monkeypatch.setattr(fewclip.threads, "available_cores", lambda: 4)  # a machine with 4 cores
    expected = {None: 4, "1": 4, "2": 2, "3": 1, "8": 1, "x": 4}  # LOCAL_WORLD_SIZE -> threads (never below 1)
    for local, threads in expected.items():
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert resolve_threads(None) == threads, local
    assert resolve_threads(3) == 3  # runtime.threads wins


@pytest.mark.parametrize("command", [["predict", "runs/x", "a.jpg"], ["caption", "run"], ["compare", "runs/x"]])
def test_one_process_commands_refuse_torchrun(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(command) == 2
    assert f"`fewclip {command[0]}` runs in one process" in capsys.readouterr().err
