"""What a command stopped by Ctrl-C says: one line with the stage, how far it got, and that a re-run resumes.

Every stage skips what an earlier command finished (features are committed batch by batch, heads and
captioners unit by unit), so an interrupted command loses at most the batch or unit it was in; a
traceback would only hide that. The stages record their ``Progress`` on the run context as they go.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from typing import Callable

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """``done`` of ``total`` ``noun`` (e.g. "units trained") of the running stage. Work committed by code
    that does not report each step (features, shard by shard) is counted from disk by ``recount``."""

    total: int
    noun: str
    done: int = 0
    recount: Callable[[], int] | None = None

    def count(self) -> int:
        return self.recount() if self.recount is not None else self.done


def interrupted_line(stage: str | None, progress: Progress | None) -> str:
    """``interrupted during train; 3 of 12 units trained, re-run the same command to resume``."""
    counted = ""
    if progress is not None:
        try:
            counted = f"; {progress.count()} of {progress.total} {progress.noun}"
        except Exception as err:  # noqa: BLE001 -- the count is a courtesy; the line itself must come out
            log.debug("could not count the finished work: %s", err)
    where = f" during {stage}" if stage else ""
    return f"interrupted{where}{counted}, re-run the same command to resume"


def exit_interrupted(line: str = "interrupted") -> int:
    """For the CLIs: print ``fewclip: <line>`` on stderr and return the exit status of a Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while the line is written changes nothing
    print(f"fewclip: {line}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED
