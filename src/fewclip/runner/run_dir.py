"""Claiming a run directory for one command: where it may be, whose it is, who uses it, which config it holds.

- A run directory is fewclip's once it holds ``.fewclip-run.json``, written when fewclip creates it (or
  finds it empty). fewclip never writes into a non-empty folder without that marker, so a mistyped
  ``output.dir`` cannot overwrite a user's ``config.yaml`` or ``data/``.
- It may not lie inside the dataset folder (the next prepare would read the run's images as a class).
- While a command runs it holds an exclusive ``flock`` on ``.fewclip-run.lock``: a second command on
  the same directory fails at once, naming the process that holds it. The lock belongs to the command's
  process alone: a process it forks (a DataLoader worker) drops its copy of the lock's descriptor, so a
  killed command's orphaned workers never keep the directory locked (``_drop_locks_in_child``).
- A command whose config differs from the run's ``config.yaml`` in a run-defining key is refused unless
  forced; other keys may change freely. Each kind of run says which keys define it in its ``RunDirRules``
  (classification's here, ``CLASSIFICATION_RULES``: model, dataset, prompts, few_shot, splits, see ``FREE_KEYS``;
  captioning's in ``fewclip.runner.captioning``).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from fewclip.version import __version__
from fewclip.runner.config import Config, ConfigError, load_config
from fewclip.runner.config_yaml import ConfigFileError, read_yaml_file
from fewclip.distributed import SINGLE, Ranks
from fewclip.fileio import read_json, write_json
from fewclip.heads import HEADS, list_heads
from fewclip.runner.layout import RunFiles, run_root

MARKER = RunFiles(Path()).marker.name
LOCK = RunFiles(Path()).lock.name

# Keys that may change between commands on one run directory. Head blocks are free because a head
# records a fit key over its own config and inputs and is retrained when they change; output, cache,
# wandb, name and the model's batch size, loader threads and device change no result.
FREE_KEYS = (
    "name",
    "methods",
    "variants",
    "runtime",
    "wandb",
    "output",
    "cache",
    "model.batch_size",
    "model.loader_threads",
    "model.device",
    "dataset.eval_on",
    "dataset.label",  # targets: evaluation only
    "dataset.duplicates",
)  # changes no image prepare keeps, only whether it refuses them


class RunDirError(ValueError):
    """A run directory that may not be used by this command; the message says why and what to do."""


# Top-level config blocks only one kind of run has (classification: fewclip.runner.config; captioning:
# fewclip.runner.caption_config), so a run directory handed to the other kind's command is named as such
# instead of failing validation key by key.
KIND_BLOCKS = {
    "classification": ("dataset", "few_shot", "splits", "prompts"),
    "caption": ("data", "decode", "attention", "clipscore_model"),
}
KIND_NAMES = {"classification": "a classification run", "caption": "a captioning run"}
KIND_COMMANDS = {"classification": "fewclip", "caption": "fewclip caption"}


def run_kind(root: Path) -> str | None:
    """ "classification" or "caption" by the top-level blocks of the run's config.yaml; None when it has
    none, cannot be read, or shows neither (its own command then says what is wrong with it)."""
    try:
        blocks = read_yaml_file(RunFiles(root).config)
    except (OSError, ConfigFileError):
        return None
    if not isinstance(blocks, dict):
        return None
    kinds = [kind for kind, keys in KIND_BLOCKS.items() if any(key in blocks for key in keys)]
    return kinds[0] if len(kinds) == 1 else None


def check_run_kind(root: Path, expected: str, usage: str) -> None:
    """Refuse a run directory of the other kind, naming the command for it: ``usage`` is that command's
    arguments (``predict RUN IMAGE...``), said after ``fewclip`` or ``fewclip caption``."""
    kind = run_kind(root)
    if kind is not None and kind != expected:
        raise RunDirError(
            f"{root} is {KIND_NAMES[kind]}, not {KIND_NAMES[expected]}; use `{KIND_COMMANDS[kind]} {usage}`"
        )


def dataset_folders(config: Config) -> list[Path]:
    """Local folders the dataset is read from by listing them (a run dir inside one would become data)."""
    dataset: Any = config.dataset
    if dataset.source == "folder":
        return [Path(dataset.path).expanduser()]
    if dataset.source == "hf" and Path(dataset.id).expanduser().is_dir():
        return [Path(dataset.id).expanduser()]
    return []


def check_location(config: Any, folders: Callable[[Any], list[Path]] = dataset_folders) -> None:
    """Refuse an output.dir that is, or lies inside, a folder the dataset is read from (``folders``: those of
    the config's kind; classification's by default)."""
    root = run_root(config).resolve()
    for folder in folders(config):
        folder = folder.resolve()
        if root == folder or folder in root.parents:
            raise RunDirError(
                f"output.dir {root} is inside the dataset folder {folder}: the next prepare would read the "
                f"run's images and plots as a class; choose an output.dir outside {folder}"
            )


def first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (what creating ``path`` creates)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def abandon(root: Path, created: Path | None) -> None:
    """After a failed first command: remove the marker and lock it left in ``root`` when nothing else was written,
    and the folders it created (``created``: the outermost), so a typo never leaves a run directory behind."""
    layout = RunFiles(root)
    if not root.is_dir() or {p.name for p in root.iterdir()} - {MARKER, LOCK}:
        return
    layout.marker.unlink(missing_ok=True)
    layout.lock.unlink(missing_ok=True)
    if created is None:
        return
    for folder in (root, *root.parents):
        try:
            folder.rmdir()  # only ever empty folders
        except OSError:
            return
        if folder == created:
            return


def claim(root: Path) -> None:
    """Make ``root`` a run directory (new or empty folder) or accept one that already is; refuse the rest."""
    layout = RunFiles(root)
    if layout.marker.is_file():
        return
    if root.exists() and not root.is_dir():
        raise RunDirError(f"output.dir {root} is a file, not a folder; choose another output.dir")
    if root.is_dir():
        entries = sorted(p.name for p in root.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunDirError(
                f"output.dir {root} is not empty ({shown}) and is not a fewclip run directory (it has no "
                f"{MARKER}); fewclip writes only into a new or empty folder or its own run directory, so it "
                f"never overwrites your files: choose another output.dir (if {root} is a run of an older "
                f"fewclip, create an empty {root / MARKER} to adopt it)"
            )
    write_json(layout.marker, {"fewclip": __version__, "created": datetime.now(timezone.utc).isoformat()})


def record_threads(root: Path, threads: int, processes: int = 1) -> int | None:
    """Note this command's CPU thread count (per process, and its ``processes`` on this machine: torchrun's) in
    the run directory's marker; return the count its last command used when that ran as many processes with
    another count (None otherwise, or when never noted). What a command computes depends on the count
    (``fewclip.threads``), so a resume repeats an uninterrupted run to the bit only with the same count; a
    torchrun job differs from one process anyway (docs/protocols.md)."""
    marker = RunFiles(root).marker
    try:
        noted = read_json(marker)
    except (OSError, ValueError):  # an adopted run's empty marker
        noted = {}
    noted = noted if isinstance(noted, dict) else {}
    before = (noted.get("threads"), noted.get("processes", 1))
    if before != (threads, processes):
        write_json(marker, {**noted, "threads": threads, "processes": processes})
    differs = isinstance(before[0], int) and before[0] != threads and before[1] == processes
    return before[0] if differs else None


# Descriptors of the run-dir locks this process holds. A flock belongs to the open file, which a forked
# child shares: DataLoader workers (forked, and living on for seconds after their parent is SIGKILLed,
# until their watchdog notices) would otherwise keep the run directory locked for a dead command.
_HELD_LOCKS: set[int] = set()


def _drop_locks_in_child() -> None:
    """In a forked child: point each inherited lock descriptor at /dev/null. The parent's descriptor keeps
    its lock (a flock lasts while any descriptor of the open file does); the child's no longer does.
    dup2 rather than close, so the child's copy of the file object later closes /dev/null, never a
    descriptor number reused for something else."""
    if not _HELD_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for fd in _HELD_LOCKS:
            os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


def _alive(pid: str) -> bool:
    """Whether process ``pid`` exists (True when unknown or not ours to signal: assume it is live)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory; fail at once if another command holds it."""
    handle = open(RunFiles(root).lock, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            if holder != "unknown" and not _alive(holder):  # children of a dead command that still hold it
                raise RunDirError(
                    f"run dir {root} is locked by processes that pid {holder}, which has ended, "
                    "left behind; they usually exit within seconds: run the command again (if it "
                    f"persists, `fuser -v {RunFiles(root).lock}` lists them; end them)"
                ) from None
            raise RunDirError(
                f"run dir {root} is in use by pid {holder}; wait for it to finish or choose another output.dir"
            ) from None
        _HELD_LOCKS.add(handle.fileno())  # forked children drop it (above)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        _HELD_LOCKS.discard(handle.fileno())
        handle.close()  # closing releases the lock; a killed process releases it too


def flatten_keys(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"block.key": value}``."""
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def _is_free(key: str) -> bool:
    head_blocks = {HEADS.get(m).config_key for m in list_heads()} - {None}
    return any(key == free or key.startswith(free + ".") for free in (*FREE_KEYS, *head_blocks))


def differing_keys(previous: Any, current: Any, counts: Callable[[str], bool]) -> list[str]:
    """``key: <run's value> -> <this value>`` for every flattened key of two configs that ``counts`` and
    that differs (``(unset)`` where one side lacks it)."""
    before, after = flatten_keys(previous.model_dump(mode="json")), flatten_keys(current.model_dump(mode="json"))
    missing = object()
    return [
        f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}".replace(repr(missing), "(unset)")
        for key in sorted(set(before) | set(after))
        if counts(key) and before.get(key, missing) != after.get(key, missing)
    ]


def config_differences(previous: Config, current: Config) -> list[str]:
    """``key: <run's value> -> <this value>`` for every run-defining key that differs."""
    return differing_keys(previous, current, lambda key: not _is_free(key))


@dataclass(frozen=True)
class RunDirRules:
    """What claiming a run directory checks for one kind of run (classification, captioning)."""

    kind: str  # in the refusal: "holds a <kind> run of a different config" ("" for classification)
    load: Callable[[Path], Any]  # the run's config.yaml as this kind's config
    defining: Callable[[str], bool]  # whether a flattened key ("model.id") defines the run
    retrained: str  # what --force costs, said in the refusal
    data_folders: Callable[[Any], list[Path]] = lambda config: []  # folders the run directory may not lie in

    def check_same_config(self, layout: RunFiles, config: Any) -> None:
        """Refuse a config whose run-defining keys differ from the run directory's ``config.yaml``, or a
        ``config.yaml`` that does not load as this kind's config; nothing when there is no config yet."""
        if not layout.config.is_file():
            return
        try:
            previous = self.load(layout.config)
        except ConfigError as err:
            as_kind = f" as a {self.kind} config" if self.kind else ""
            raise RunDirError(
                f"{layout.config} (the run's config) does not load with this fewclip{as_kind}: "
                f"{err}\nChoose another output.dir, or pass --force to replace it with this config"
            ) from None
        listed = "\n  ".join(differing_keys(previous, config, self.defining))
        if listed:
            raise RunDirError(
                f"output.dir {layout.root} holds a {self.kind + ' ' if self.kind else ''}run of a different config "
                f"({layout.config}); run-defining keys differ (run's value -> this config's):\n  {listed}\n"
                f"Choose another output.dir for this config, or pass --force to replace the run's config "
                f"({self.retrained})"
            )


CLASSIFICATION_RULES = RunDirRules(
    "",
    load_config,
    lambda key: not _is_free(key),
    "heads trained on other inputs are then retrained by `fewclip train`",
    dataset_folders,
)


@contextmanager
def open_run(
    config: Any, force: bool = False, ranks: Ranks = SINGLE, rules: RunDirRules = CLASSIFICATION_RULES
) -> Iterator[RunFiles]:
    """Claim and lock the config's run directory for one command (see the module docstring); ``rules``: those of
    the config's kind (classification's by default).

    In a torchrun job rank 0 claims and locks it for all ranks; the others wait for its verdict and fail
    with the same message if it was refused."""
    root = run_root(config)
    if ranks.distributed and not ranks.is_main:
        refusal = ranks.share(None)
        if refusal is not None:
            raise RunDirError(refusal)
        yield RunFiles(root)
        return
    told = False  # whether the other ranks have heard the verdict
    first_command = not RunFiles(root).marker.is_file()
    created = first_missing(root)
    try:
        check_location(config, rules.data_folders)
        claim(root)
        with locked(root):
            layout = RunFiles(root)
            if not force:
                rules.check_same_config(layout, config)
            told = ranks.share(None) is None
            yield layout
    except RunDirError as err:
        if not told:
            ranks.share(str(err))
        raise
    except BaseException:
        if first_command:  # the run directory this command created holds nothing but its marker and lock
            abandon(root, created)
        raise
