"""Run directories: only fewclip's own (marker), never inside the dataset, one command at a time (lock),
one config per run (unless --force), and predict refusing a head trained on another backbone."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip.runner import pipeline
from fewclip.runner.cli import main
from fewclip.runner.predict import HeadMismatch, load_classifier
from fewclip.runner.run_dir import LOCK, MARKER, RunDirError, claim, config_differences, locked, open_run
from fewclip.runner.run_context import RunContext

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture()
def config_file(make_config: Callable[..., Any], tmp_path: Path) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(make_config("few_shot.shots=[1]", "methods=[linear_probe]", "output.figures=false").to_yaml())
    return path


def test_a_new_run_dir_gets_the_marker(make_config: Callable[..., Any], tmp_path: Path) -> None:
    config = make_config(f"output.dir={tmp_path / 'fresh' / 'run'}")
    with open_run(config) as layout:
        assert layout.root == tmp_path / "fresh" / "run"
        assert sorted(p.name for p in layout.root.iterdir()) == [MARKER, LOCK]
    assert json.loads((layout.root / MARKER).read_text())["fewclip"] == __import__("fewclip").__version__
    assert (layout.root / LOCK).read_text() == f"{os.getpid()}\n"


def test_a_users_folder_is_never_written(config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "project"  # what `output.dir=.` (or a typo) pointed at: the user's own files
    (home / "data").mkdir(parents=True)
    (home / "config.yaml").write_text("mine\n")
    (home / "data" / "test.csv").write_text("path,label\nmine.png,mine\n")
    before = sorted((p.relative_to(home), p.read_bytes()) for p in home.rglob("*") if p.is_file())
    assert main(["-q", "prepare", str(config_file), f"output.dir={home}"]) == 2
    err = capsys.readouterr().err
    assert (
        f"fewclip: error: output.dir {home} is not empty (config.yaml, data) and is not a fewclip run "
        f"directory (it has no {MARKER})" in err
    )
    assert "choose another output.dir" in err
    assert sorted((p.relative_to(home), p.read_bytes()) for p in home.rglob("*") if p.is_file()) == before


def test_an_empty_existing_folder_is_claimed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    claim(tmp_path / "empty")
    assert (tmp_path / "empty" / MARKER).is_file()
    claim(tmp_path / "empty")  # now fewclip's: accepted again


@pytest.mark.parametrize("inside", ["", "runs/x"])
def test_a_run_dir_inside_the_dataset_folder_fails(
    make_config: Callable[..., Any], shapes_dir: Path, inside: str
) -> None:
    config = make_config(f"output.dir={shapes_dir / inside}")
    with pytest.raises(RunDirError) as info:
        RunContext(config)
    assert str(info.value).startswith(
        f"output.dir {(shapes_dir / inside).resolve()} is inside the dataset folder {shapes_dir.resolve()}"
    )
    assert not (shapes_dir / "runs").exists()


def test_a_second_lock_on_a_run_dir_fails_at_once(tmp_path: Path) -> None:
    with locked(tmp_path):
        with pytest.raises(RunDirError) as info:
            with locked(tmp_path):
                pass
        assert str(info.value) == (
            f"run dir {tmp_path} is in use by pid {os.getpid()}; wait for it to finish or choose another output.dir"
        )
    with locked(tmp_path):  # released when the first command ends
        pass


def test_a_command_on_a_run_dir_another_process_uses_fails(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_root = tmp_path / "run"
    assert main(["-q", "prepare", str(config_file)]) == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from fewclip.runner.run_dir import locked
            with locked(Path({str(run_root)!r})):
                print("held", flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(["-q", "prepare", str(config_file)]) == 2
        assert f"run dir {run_root} is in use by pid {holder.pid}; wait" in capsys.readouterr().err
    finally:
        holder.communicate("", timeout=60)  # closing stdin ends the holder, which releases the lock
    assert main(["-q", "prepare", str(config_file)]) == 0


def test_workers_of_a_killed_command_do_not_keep_its_run_dir_locked(tmp_path: Path) -> None:
    """A command training with DataLoader workers is SIGKILLed: its workers live on for seconds (until their
    watchdog sees the parent gone), and must not hold the run directory's lock meanwhile."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import multiprocessing, time
            from pathlib import Path
            from torch.utils.data import DataLoader
            from fewclip.runner.run_dir import locked

            class Slow:
                def __len__(self):
                    return 1000
                def __getitem__(self, index):
                    time.sleep(1)
                    return index

            with locked(Path({str(tmp_path)!r})):
                batches = iter(DataLoader(Slow(), num_workers=2))  # forks the workers
                print(*[child.pid for child in multiprocessing.active_children()], flush=True)
                time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert holder.stdout is not None
    workers = [int(pid) for pid in holder.stdout.readline().split()]
    try:
        assert len(workers) == 2
        holder.kill()
        holder.wait(timeout=60)
        for pid in workers:
            os.kill(pid, 0)  # still alive: orphans of the killed command
        with locked(tmp_path):  # at once, not once the orphans have gone
            pass
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_lock_left_by_a_dead_pid_says_so(tmp_path: Path) -> None:
    """Should a dead command's lock outlive it anyway (a child forked outside Python), the message says that
    the named pid has ended and what to do, not that it is in use."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(tmp_path / LOCK, "a+", encoding="utf-8") as stray:  # another open file: flock conflicts with it
        fcntl.flock(stray, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stray.write(f"{dead.pid}\n")
        stray.flush()
        with pytest.raises(RunDirError) as info:
            with locked(tmp_path):
                pass
    assert str(info.value).startswith(
        f"run dir {tmp_path} is locked by processes that pid {dead.pid}, which has "
        "ended, left behind; they usually exit within seconds: run the command again"
    )


def test_a_stage_of_another_config_is_refused_unless_forced(
    config_file: Path, tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_model = tmp_path / "other-clip"
    shutil.copytree(tiny_clip, other_model)
    assert main(["-q", "prepare", str(config_file)]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["-q", "features", str(config_file), f"model.id={other_model}", "splits.seeds=[1,2]"]) == 2
    err = capsys.readouterr().err
    assert f"output.dir {tmp_path / 'run'} holds a run of a different config" in err
    assert f"  model.id: {str(tiny_clip)!r} -> {str(other_model)!r}\n  splits.seeds: [1] -> [1, 2]\n" in err
    assert "pass --force" in err
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    assert main(["-q", "prepare", "--force", str(config_file), f"model.id={other_model}"]) == 0
    assert f"id: {other_model}" in (tmp_path / "run" / "config.yaml").read_text()


def test_keys_that_change_no_result_may_change(make_config: Callable[..., Any]) -> None:
    base = make_config()
    assert (
        config_differences(
            base,
            make_config(
                "name=again",
                "methods=[zero_shot,linear_probe,coop]",
                "linear_probe.epochs=3",
                "coop.n_ctx=4",
                "output.progress=true",
                "output.figures=false",
                "wandb.mode=offline",
                "model.batch_size=4",
                "model.device=cpu",
                "cache.dir=/elsewhere",
                "runtime.threads=1",
            ),
        )
        == []
    )
    assert (
        config_differences(base, make_config("methods=[zero_shot,coop,coop@n4]", variants={"coop@n4": {"n_ctx": 4}}))
        == []
    )
    assert config_differences(
        base, make_config("few_shot.shots=[1]", "prompts.templates=['a {}.']", "model.precision=bf16")
    ) == [
        "few_shot.shots: [1, 2, 4] -> [1]",
        "model.precision: 'fp32' -> 'bf16'",
        f"prompts.templates: {base.prompts.templates!r} -> ['a {{}}.']",
    ]


def test_predict_refuses_a_head_trained_on_another_backbone(
    make_config: Callable[..., Any], tiny_clip: Path, tmp_path: Path
) -> None:
    config = make_config("few_shot.shots=[1]", "methods=[linear_probe]", "output.figures=false")
    pipeline.run(config)
    root = Path(config.output.dir)
    assert load_classifier(root).unit == "linear_probe/shot_1-seed_1"
    other_model = tmp_path / "other-clip"
    shutil.copytree(tiny_clip, other_model)
    # what `fewclip features other.yaml --force` into this run dir leaves: another backbone in config.yaml
    (root / "config.yaml").write_text(
        make_config("few_shot.shots=[1]", "methods=[linear_probe]", f"model.id={other_model}").to_yaml()
    )
    with pytest.raises(HeadMismatch) as info:
        load_classifier(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'heads' / 'linear_probe/shot_1-seed_1'}.json was trained on features ")
    assert f"(model {str(tiny_clip)!r}), but {root / 'config.yaml'} names model {str(other_model)!r}" in message
    assert "Run `fewclip train`" in message
