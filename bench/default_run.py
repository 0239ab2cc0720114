"""The default run (`fewclip run`, the embedded offline world) from an empty cache, as a new user meets it: the
wall time of the whole command and where it goes, stage by stage and head by head, against the 60 s target.

    python bench/default_run.py [--threads N] [--work DIR] [-- OVERRIDES...]

It runs the command in a subprocess with its log in a file (one line per finished stage and unit), in a fresh
output folder and cache, and reads the stage lines back; the per-head training time is the sum of the heads'
recorded ``train_seconds``. State the machine's load (`uptime`) beside the figure: a loaded machine's is not one.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 60.0
STAGE_LINE = re.compile(r"(\w+) done in ([0-9.]+)s")


def load() -> str:
    """The 1, 5 and 15 minute load averages (Linux), or "?"."""
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None, help="FEWCLIP_THREADS (default: fewclip's own)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench-default"))
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as for fewclip run")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "FEWCLIP_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    if args.threads is not None:
        env["FEWCLIP_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "fewclip", "run", f"output.dir={work / 'run'}", *args.overrides]
    print(f"load average before: {load()}")
    start = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    total = time.perf_counter() - start
    print(f"load average after:  {load()}")
    stages = [(m.group(1), float(m.group(2))) for m in STAGE_LINE.finditer((work / "log.txt").read_text())]
    per_head: dict[str, float] = collections.defaultdict(float)
    units: dict[str, int] = collections.defaultdict(int)
    for file in (work / "run" / "heads").glob("*/*.json"):
        per_head[file.parent.name] += float(json.loads(file.read_text()).get("train_seconds") or 0.0)
        units[file.parent.name] += 1
    print(f"{'stage':<10} {'seconds':>8}")
    for stage, seconds in stages:
        print(f"{stage:<10} {seconds:8.1f}")
    print(f"{'start-up':<10} {total - sum(s for _, s in stages):8.1f}  (interpreter, imports, config, checks)")
    print(
        f"{'total':<10} {total:8.1f}  target {TARGET_SECONDS:.0f} s: ratio total / target {total / TARGET_SECONDS:.2f}"
    )
    print(f"\n{'head':<15} {'units':>5} {'train s':>8}")
    for head, seconds in sorted(per_head.items(), key=lambda item: -item[1]):
        print(f"{head:<15} {units[head]:5d} {seconds:8.1f}")


if __name__ == "__main__":
    main()
