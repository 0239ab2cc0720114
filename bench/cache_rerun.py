"""The second run of a config vs the first: the first extracts every feature, the second finds them
in the cache (and finds its heads already trained), ViT-B/32 architecture with random weights.

    python bench/cache_rerun.py [--classes 10] [--per-class 24]

Target: second run >= 10x faster than the first.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import photo_folder, vit_b32_random
from fewclip.runner.config import load_config
from fewclip.runner.pipeline import run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"))
    args = parser.parse_args()
    work = Path(args.work)
    model_dir = vit_b32_random(work / "vit-b32-random")
    data = photo_folder(work / f"photos-{args.classes}x{args.per_class}", args.classes, args.per_class)
    run_dir, cache_dir = work / "rerun-run", work / "rerun-cache"
    for folder in (run_dir, cache_dir):
        shutil.rmtree(folder, ignore_errors=True)
    overrides = [
        f"model.id={model_dir}",
        "model.device=cpu",
        "dataset.source=folder",
        f"dataset.path={data}",
        "few_shot.shots=[1,2,4,8]",
        "splits.seeds=[1]",
        f"output.dir={run_dir}",
        "output.progress=false",
        f"cache.dir={cache_dir}",
    ]
    times = []
    for _ in range(2):
        config = load_config(None, overrides)
        start = time.perf_counter()
        run(config)
        times.append(time.perf_counter() - start)
    n_images = sum(1 for _ in data.rglob("*.jpg"))
    print(f"images={n_images} methods={config.methods} shots={config.few_shot.shots} seeds={config.splits.seeds}")
    print(f"first run : {times[0]:7.2f} s")
    print(f"second run: {times[1]:7.2f} s")
    print(f"ratio first / second: {times[0] / times[1]:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
