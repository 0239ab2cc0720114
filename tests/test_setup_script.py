"""setup.sh skips what is installed: no pip (so no package index) when .venv is complete."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.log"
case "$*" in *"import torch"*) echo "2.13.0";; esac
exit 0
"""


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """setup.sh and pyproject.toml beside a .venv whose python is a stub that records its calls."""
    shutil.copy(ROOT / "setup.sh", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB)
    python.chmod(0o755)
    return tmp_path


def setup(checkout: Path, **env: str) -> list[str]:
    log = checkout / ".venv" / "bin" / "calls.log"
    log.unlink(missing_ok=True)
    subprocess.run(
        ["bash", "setup.sh"], cwd=checkout, check=True, capture_output=True, env={"PATH": "/usr/bin:/bin", **env}
    )
    return log.read_text().splitlines() if log.is_file() else []


def pip_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip")]


def test_first_setup_installs_fewclip_but_not_a_present_torch_then_nothing(checkout: Path) -> None:
    assert pip_calls(setup(checkout)) == ["-m pip install -q -e .[test]"]  # torch 2.13.0 already imports
    assert pip_calls(setup(checkout)) == []  # the stamp matches: no pip, no package index
    (checkout / "pyproject.toml").write_text((checkout / "pyproject.toml").read_text() + "\n# changed\n")
    assert pip_calls(setup(checkout)) == ["-m pip install -q -e .[test]"]


def test_another_torch_pin_or_a_forced_reinstall_installs_torch(checkout: Path) -> None:
    setup(checkout)
    calls = pip_calls(setup(checkout, FEWCLIP_TORCH_VERSION="2.12.0"))
    assert "-m pip install -q torch==2.12.0" in calls and "-m pip install -q -e .[test]" in calls
    assert "-m pip install -q torch==2.13.0" in pip_calls(setup(checkout, FEWCLIP_REINSTALL="1"))


def test_open_clip_environment_pins_the_index_torch_build_then_skips(checkout: Path) -> None:
    python = checkout / ".venv-open-clip" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB)
    python.chmod(0o755)
    log = python.parent / "calls.log"

    def run() -> list[str]:
        log.unlink(missing_ok=True)
        subprocess.run(
            ["bash", "setup.sh", "--open-clip"],
            cwd=checkout,
            check=True,
            capture_output=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        return pip_calls(log.read_text().splitlines() if log.is_file() else [])

    calls = run()
    # torch===: exactly the index's build, never a local +cpu wheel (no torchvision exists for it); its ~3 GB of
    # CUDA wheels are not kept a second time in pip's cache (CI once ran out of disk there)
    assert "-m pip install -q --no-cache-dir torch===2.13.0 torchvision==0.28.0 open_clip_torch==3.3.0" in calls
    assert calls[-1] == "-m pip install -q --no-cache-dir -e .[test,open_clip]"
    assert run() == []  # complete: nothing installed again
    assert not (checkout / ".venv" / "bin" / "calls.log").exists()  # the default environment is not touched


def test_unknown_setup_option_is_refused(checkout: Path) -> None:
    done = subprocess.run(
        ["bash", "setup.sh", "--openclip"], cwd=checkout, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 2 and "usage: bash setup.sh [--open-clip]" in done.stderr
