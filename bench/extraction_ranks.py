"""Feature extraction with 2 torchrun processes vs 1, through the real command, on a fresh cache each time.

    python bench/extraction_ranks.py [--images 192] [--batch 32] [--threads-per-rank 1]

Each side runs ``fewclip prepare`` (untimed), then ``fewclip features`` (timed, wall clock of the whole
command, process start and model load included) on the ViT-B/32-architecture CLIP with random weights and
photo-sized JPEGs: once as one process, once as ``torchrun --standalone --nproc-per-node 2 -m fewclip
features``. The one-process side gets ``ranks x threads-per-rank`` torch threads, so both use the same cores.
It then checks that both caches hold the same features, bit for bit.

What to expect: on this 2-core CPU the two processes share the cores one process already uses, so the ratio
stays near 1 (their gain is only overlapping one rank's image decoding with the other's forward). On a GPU
machine each rank drives its own GPU and decodes with its own loader threads, so extraction scales with the
number of GPUs until the disk or the CPU decoding the JPEGs is the limit; there the ratio is the point.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from _common import photo_folder, vit_b32_random


def fewclip(args: list[str], ranks: int) -> float:
    """Wall seconds of ``fewclip ARGS`` (under torchrun when ``ranks`` > 1); raises if it fails."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    command = [*(launcher if ranks > 1 else [sys.executable]), "-m", "fewclip", "-q", *args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds


def cached(cache: Path) -> dict[str, np.ndarray]:
    rows = {}
    for keys_file in cache.glob("features/*/*.keys"):
        keys = [k for k in keys_file.read_text().splitlines() if k and not k.startswith("#")]
        rows.update(zip(keys, np.load(keys_file.with_suffix(".npy"))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=192, help="test images (the ones extraction encodes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"))
    args = parser.parse_args()
    work = Path(args.work)
    model = vit_b32_random(work / "vit-b32-random")
    data = photo_folder(work / f"photos-ranks-{args.images}", classes=4, per_class=2, test_per_class=args.images // 4)
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average)")
    times, rows = {}, {}
    for ranks in (1, 2):
        root = Path(tempfile.mkdtemp(prefix=f"ranks{ranks}-", dir=work))
        config = root / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "methods": ["zero_shot"],
                    "model": {"id": str(model), "batch_size": args.batch, "loader_threads": 2},
                    "dataset": {"source": "folder", "path": str(data)},
                    "output": {"dir": str(root / "run"), "figures": False},
                    "cache": {"dir": str(root / "cache")},
                    "runtime": {"threads": args.threads_per_rank * (2 if ranks == 1 else 1)},
                }
            )
        )
        fewclip(["prepare", str(config)], 1)
        times[ranks] = fewclip(["features", str(config)], ranks)
        rows[ranks] = cached(root / "cache")
    same = rows[1].keys() == rows[2].keys() and all(np.array_equal(v, rows[2][k]) for k, v in rows[1].items())
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"{'processes':>9}  {'images':>6}  {'seconds':>8}  {'images/s':>8}")
    for ranks, seconds in times.items():
        print(f"{ranks:>9}  {len(rows[ranks]):>6}  {seconds:>8.1f}  {len(rows[ranks]) / seconds:>8.1f}")
    print(f"ratio 2 processes / 1 process (throughput): {times[1] / times[2]:.2f}x; features identical: {same}")


if __name__ == "__main__":
    main()
