"""Shared fixtures: a tiny CLIP saved in hub format (and loaded as fewclip loads it), synthetic image folders (and
the shapes' image sets), offline hub settings."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One thread count for the whole session, chosen once at its start: the cores the load average leaves free (the
# suite runs on shared machines, where fewer threads than cores run faster under load; fewclip's own default
# ignores the load, see fewclip.threads). Every test's runs then use one count, as two runs compared bit for bit
# (a clean and a resumed one) must. (.ci/run's second pass sets 1.)
from fewclip.threads import THREADS_ENV, available_cores, free_cores  # noqa: E402

os.environ.setdefault(THREADS_ENV, str(free_cores(available_cores())))

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402

from fewclip.backbones import load_backbone  # noqa: E402
from fewclip.backbones.config import ModelConfig  # noqa: E402
from fewclip.runner.config import load_config  # noqa: E402
from fewclip.world.toy import build_shapes_dataset, build_tiny_clip  # noqa: E402

from tests.heads.image_tasks import shapes_sets  # noqa: E402

CLASSES = ["red_circle", "green_square", "blue_triangle"]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random CLIPModel (+ CLIP-format tokenizer, preprocessor) written by save_pretrained.

    Its tokenizer knows only byte symbols and a few merges, so class names split into several tokens.
    """
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model", seed=0)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/{train,test}/<class>/NNNN.png for three classes: 12 train and 6 test images each."""
    return build_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", CLASSES, 12, 6, seed=0)


@pytest.fixture(scope="session")
def backbone(tiny_clip: Path) -> Any:
    """The tiny CLIP as fewclip loads it, on the CPU (a test module may define its own ``backbone``)."""
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="session")
def shapes(shapes_dir: Path) -> dict[str, Any]:
    """The shapes' class names and val / train / test ImageSets (``image_tasks.shapes_sets``)."""
    return shapes_sets(shapes_dir)


@pytest.fixture()
def make_config(tiny_clip: Path, shapes_dir: Path, tmp_path: Path):
    """Build a Config from the real defaults plus the given dotted overrides (tiny model, shapes data)."""

    def build(*overrides: str, **blocks: Any):
        base: dict[str, Any] = {
            "methods": ["zero_shot", "linear_probe"],  # prompt-learning tests name their heads themselves
            "model": {"id": str(tiny_clip), "batch_size": 16},
            "dataset": {"source": "folder", "path": str(shapes_dir)},
            "few_shot": {"shots": [1, 2, 4]},
            "splits": {"seeds": [1], "val_per_class": 2},
            "linear_probe": {"epochs": 20},
            "output": {"dir": str(tmp_path / "run"), "progress": False},
            "cache": {"dir": str(tmp_path / "cache")},
        }
        for key, value in blocks.items():
            merge = isinstance(value, dict) and key != "dataset"  # a dataset block replaces the default whole
            base[key] = {**base.get(key, {}), **value} if merge else value
        return load_config(None, list(overrides), base=base)

    return build


class WatchedFifo:
    """A FIFO at ``path`` and a thread that notes whether anything opened it for reading (``was_read``).

    The thread then closes its end at once, so a reader sees end-of-file instead of blocking: code that
    wrongly reads a FIFO fails its test instead of hanging it."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.was_read, self._stop = path, threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:  # succeeds only while a reader has it open (ENXIO otherwise)
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
                self.was_read.set()
            except OSError:
                pass
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture()
def watched_fifo(tmp_path: Path):
    """A FIFO ``pipe.png``, alone in a folder of its own (see ``WatchedFifo``)."""
    (tmp_path / "with_fifo").mkdir()
    fifo = WatchedFifo(tmp_path / "with_fifo" / "pipe.png")
    yield fifo
    fifo.close()


def interrupted_cli(
    args: list[str], ready: Callable[[], bool], tmp_path: Path, prelude: str = "", timeout: float = 300
) -> tuple[int, str]:
    """Run ``fewclip <args>`` in a subprocess (its own process group, as a terminal's foreground job), send
    the group SIGINT as Ctrl-C does once ``ready()`` holds, and return the exit status and stderr.
    ``prelude``: Python run in the child before the CLI (e.g. to slow a stage down enough to interrupt it)."""
    # A terminal's job takes SIGINT as Python's KeyboardInterrupt; a background job of a non-interactive shell
    # (a CI script started with &, nohup) inherits SIGINT ignored, and Python then keeps ignoring it: the child
    # restores the terminal's handling first.
    code = (
        "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"{prelude}\nfrom fewclip.runner.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    stderr_file = tmp_path / "interrupted-stderr.txt"
    with open(stderr_file, "w", encoding="utf-8") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if child.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the command ended (status {child.returncode}) or timed out before it "
                        f"could be interrupted:\n{stderr_file.read_text()}"
                    )
                time.sleep(0.05)
            os.killpg(child.pid, signal.SIGINT)
            status = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    return status, stderr_file.read_text(encoding="utf-8")


@pytest.fixture()
def interrupt_cli(tmp_path: Path) -> Callable[..., tuple[int, str]]:
    """``interrupted_cli`` with this test's tmp_path."""
    return lambda args, ready, **options: interrupted_cli(args, ready, tmp_path, **options)


# Tests whose assertions rest on float arithmetic agreeing across code paths: .ci/run runs them a second time
# with one thread and other vector kernels (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS), so an assertion that
# holds on one machine's kernels only fails in CI rather than on a user's CPU.
NUMERIC_FILES = ("test_contract.py", "test_saliency.py", "test_clip_lora_saliency.py", "test_maple_saliency.py")
NUMERIC_WORDS = ("resum", "exact", "identical", "equivalen", "same_as", "matches", "bit", "reload", "saved")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if (
            path.parent.name == "reference"
            or path.name in NUMERIC_FILES
            or any(word in item.name.lower() for word in NUMERIC_WORDS)
        ):
            item.add_marker(pytest.mark.numerics)
