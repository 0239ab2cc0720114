"""The run skeleton that classification and captioning share: a task is an ordered table of stages over a
context, and one loop runs them.

A ``RunTask`` declares what a kind of run plugs in: its stages (name -> function of the context, in run
order), its config loader and embedded default, its context class, the rules of its run directory, the
checks made before that directory is touched, and the lines a finished command prints. ``StageRun`` is the
one stage loop, used by the CLI (``fewclip run``, ``fewclip caption run``, each stage command) and by the
Python API (``fewclip.run``) alike: it joins a torchrun job where the task runs distributed, sets the torch
threads, makes the checks, claims and locks the run directory (``fewclip.runner.run_dir``), opens the W&B run
where the task is tracked, runs the stages with their timing, and records how far it got, so that an
interrupted command can say where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from fewclip.distributed import SINGLE, Ranks, start as start_ranks
from fewclip.fileio import atomic_write_text
from fewclip.interrupt import Progress, interrupted_line
from fewclip.runner.layout import RunFiles, run_root
from fewclip.runner.run_dir import RunDirRules, open_run, record_threads
from fewclip.runner.tracking import Tracker, preflight
from fewclip.threads import THREADS_ENV, apply_threads, busy_hint, local_processes

log = logging.getLogger(__name__)

LookedIn = Callable[[str], Sequence[Path]]  # a dotted key -> the folders a relative path under it was looked for in


def nowhere(key: str) -> Sequence[Path]:
    """``LookedIn`` when no folder is worth naming (the Python API: paths are as the config gives them)."""
    return ()


@dataclass
class StageContext:
    """What every stage of every task is given: the config, this process's place in a torchrun job, the
    tracker's live hooks, and how far the running stage got. A task's context adds what its stages share."""

    config: Any
    # called as on_trained(unit, history) when a unit has been trained (the live W&B logging)
    on_trained: Callable[[str, list[dict[str, Any]]], None] | None = field(default=None, repr=False)
    # called as on_epoch(unit, row) as each epoch of a unit ends (the live W&B curves)
    on_epoch: Callable[[str, dict[str, Any]], None] | None = field(default=None, repr=False)
    ranks: Ranks = SINGLE  # this process's place in a torchrun job (see fewclip.distributed)
    progress: Progress | None = None  # how far the running stage got (said when a command is interrupted)

    @property
    def root(self) -> Path:
        return run_root(self.config)

    @property
    def cache_root(self) -> Path:
        """``cache.dir``, the cache shared by runs (features, encoder tokens, weight digests)."""
        return checked_cache_dir(self.config)

    def write_config(self) -> None:
        """The resolved config beside the results, by rank 0 alone; left untouched when it already says the same
        (a re-run of a finished run changes no file)."""
        text, path = self.config.to_yaml(), RunFiles(self.root).config
        if self.ranks.is_main and not (path.is_file() and path.read_text(encoding="utf-8") == text):
            atomic_write_text(path, text)


def warn_other_threads(root: Path, threads: int) -> None:
    """Note the thread count in the run directory; warn when its last command used another one."""
    before = record_threads(root, threads, local_processes())
    if before is not None:
        log.warning(
            "%s was last computed with %d CPU thread%s, this command uses %d (runtime.threads / %s): what it "
            "computes now agrees with a %d-thread run's to float rounding, not bit for bit (a resume repeats an "
            "uninterrupted run exactly only with the same count)",
            root,
            before,
            "s" * (before != 1),
            threads,
            THREADS_ENV,
            before,
        )


def checked_cache_dir(config: Any) -> Path:
    """``cache.dir`` as a path; an error naming the key when it, or a folder above it, is a file (the cache is a
    folder of shards: mkdir would fail with a bare "Not a directory" deep inside it)."""
    root = Path(config.cache.dir).expanduser()
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == root else f"lies under {folder}, which is a file"
                raise NotADirectoryError(
                    f"cache.dir: {root} {where}, not a folder; the feature cache is a folder: "
                    "point cache.dir (or $FEWCLIP_CACHE) at a new folder or an existing cache"
                )
            break
    return root


@dataclass(frozen=True)
class RunTask:
    """A kind of run (classification, captioning): what it plugs into the skeleton."""

    kind: str  # "classification" | "caption", as fewclip.runner.run_dir.KIND_BLOCKS tells run directories apart
    stages: Mapping[str, Callable[[Any], Any]]  # name -> stage, in run order
    context: Callable[..., StageContext]  # (config, ranks=...) -> the context the stages share
    load_config: Callable[..., Any]  # (path | None, overrides, base=...) -> a validated config
    embedded_config: Callable[[Path], dict[str, Any]]  # the offline default run, given the cache folder
    rules: RunDirRules  # what claiming its run directory checks
    check: Callable[[Any, tuple[str, ...], LookedIn], None]  # before the run directory is touched
    outcome: Callable[[Any, tuple[str, ...]], list[str]]  # what a finished command prints, given its context
    # a folder of images given where the config goes: its base config, given (folder, overrides, cache folder);
    # None: the task takes no such folder
    folder_config: Callable[[Path, Sequence[str], Path], dict[str, Any]] | None = None
    # whether a folder given where the config goes is such a folder (not a run directory); with folder_config
    is_input_folder: Callable[[Path], bool] = lambda folder: False
    # how messages name such a folder, and its shape
    input_folder_words: tuple[str, str] = ("a folder of images", "<class>/<image>, or train/ and test/ of them")
    folder_words: tuple[str, str] = ("run", "YAML config file")  # how messages name its run directory and config
    stage_log: str = "%s done in %.1fs"  # the line logged as each stage ends (its name, its seconds)
    distributed: bool = False  # joins a torchrun job (rank 0 alone writes shared files)
    tracked: bool = False  # logs to W&B as its config's ``wandb`` block says


@dataclass
class StageRun:
    """One pass of a task's stages over one config, a command's or ``fewclip.run``'s, and how far it got."""

    task: RunTask
    stages: tuple[str, ...]
    ranks: Ranks = SINGLE
    stage: str | None = None  # the stage running, or the last one started: what an interrupted command names
    context: StageContext | None = None
    offline_wandb: Path | None = None  # the local folder of an offline W&B run, once it has finished

    def __call__(
        self, config: Any, force: bool = False, quiet: bool = False, looked_in: LookedIn = nowhere
    ) -> StageContext:
        """Run the stages on ``config`` (``force``: accept a run directory holding another config); returns
        the context they shared. ``looked_in``: where relative paths were looked for, for the checks' messages."""
        self.ranks = start_ranks(config.model.device) if self.task.distributed else SINGLE
        threads = apply_threads(config.runtime.threads)
        log.info("torch uses %d CPU thread%s (runtime.threads / %s)", threads, "s" * (threads != 1), THREADS_ENV)
        hint = busy_hint(config.runtime.threads, threads)
        if hint is not None:
            log.info(hint)
        if self.task.tracked:
            if not self.ranks.is_main:  # rank 0 alone tracks, evaluates and reports
                config = config.model_copy(update={"wandb": config.wandb.model_copy(update={"mode": "disabled"})})
            if config.wandb.mode != "disabled":
                preflight(config.wandb)  # fails before the run dir is touched and the stages start, not after
        self.task.check(config, self.stages, looked_in)  # a missing model or dataset: before anything is created
        tracker = None
        try:
            # open_run: the run dir is fewclip's, holds this config (or --force) and is locked for the command
            # logging_redirect_tqdm: the logs go above the progress bars
            with open_run(config, force, self.ranks, self.task.rules) as layout, logging_redirect_tqdm():
                if self.ranks.is_main:
                    warn_other_threads(layout.root, threads)
                tracker = Tracker.for_config(config, quiet) if self.task.tracked else None
                context = self.context = self.task.context(config, ranks=self.ranks)
                if tracker is not None and tracker.enabled:
                    context.on_trained, context.on_epoch = tracker.log_history, tracker.log_epoch
                for stage in self.stages:
                    self.stage, start, context.progress = stage, time.perf_counter(), None  # each stage says its own
                    self.task.stages[stage](context)
                    log.info(self.task.stage_log, stage, time.perf_counter() - start)
                if tracker is not None:
                    log_outputs(tracker, self.stages)
        finally:
            if tracker is not None and tracker.enabled:  # also after a failed stage: what was logged is kept
                folder = Path(tracker.run.settings.sync_dir)
                tracker.finish()
                self.offline_wandb = folder if config.wandb.mode == "offline" else None
        return context

    def interrupted_line(self) -> str:
        """``interrupted during train; 3 of 12 units trained, re-run the same command to resume``."""
        return interrupted_line(self.stage, self.context.progress if self.context is not None else None)


def log_outputs(tracker: Tracker, stages: Sequence[str]) -> None:
    """After the stages: histories not logged live (trained earlier), results and the report, as far as the
    command produced them (units were logged live as they trained)."""
    if "train" in stages or "evaluate" in stages:
        tracker.log_histories()
    if "evaluate" in stages:
        tracker.log_results()
    if "report" in stages:
        tracker.log_report()
