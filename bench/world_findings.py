"""The papers' comparisons, re-run on the embedded world with the shipped world CLIP.

    python bench/world_findings.py [--seeds 1 2 3] [--shots 1 2 4 8 16] [--work DIR]

1. All classes (the default run's 16 world classes, 5 of them colour-shape combinations the CLIP never
   saw): zero-shot vs linear probe vs CoOp vs CoCoOp per shot budget, test accuracy mean +- std over seeds.
2. Base-to-new (train on the first 8 classes): base / new / harmonic mean for zero-shot, CoOp, CoCoOp.

The findings of CoOp and CoCoOp (CoOp beats zero-shot on seen classes from a few shots; CoOp loses
new-class accuracy and CoCoOp keeps more of it; a linear probe is weak at 1-2 shots) are hypotheses;
this prints what comes out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fewclip.config import default_cache_dir, load_config
from fewclip.embedded import embedded_config
from fewclip.fileio import read_csv
from fewclip.pipeline import run

METHODS = ["zero_shot", "linear_probe", "coop", "cocoop"]


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} +- {100 * std:4.1f}"


def collect(summary: Path) -> dict[tuple[str, int, str], list[float]]:
    table: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for row in read_csv(summary):
        table[(row["method"], int(row["shots"]), row["split"])].append(float(row["accuracy"]))
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-world-findings"))
    args = parser.parse_args()
    base = embedded_config(Path(default_cache_dir()))
    common = [f"splits.seeds={args.seeds}", f"few_shot.shots={args.shots}", "output.progress=false"]
    tables = {}
    for mode in ("all", "base2new"):
        start = time.perf_counter()
        config = load_config(None, common + [f"splits.subsample={mode}", f"output.dir={Path(args.work) / mode}",
                                             f"methods={METHODS}"], base=base)
        tables[mode] = collect(run(config))
        print(f"[{mode}] ran in {time.perf_counter() - start:.0f} s")

    all_classes = tables["all"]
    n_classes = len(base["dataset"]["classes"])
    print(f"\nTest accuracy (%), {n_classes} world classes, mean +- std over seeds {args.seeds}")
    print(f"{'method':14s}" + "".join(f"{k:>16d}-shot" for k in args.shots))
    zero = mean_std(all_classes[("zero_shot", 0, "test")])
    print(f"{'zero_shot':14s}" + "".join(f"{zero:>21s}" for _ in args.shots))
    for method in METHODS[1:]:
        print(f"{method:14s}" + "".join(f"{mean_std(all_classes[(method, k, 'test')]):>21s}" for k in args.shots))

    b2n = tables["base2new"]
    print(f"\nBase-to-new (%), train on {(n_classes + 1) // 2} base classes; mean +- std over seeds {args.seeds}")
    print(f"{'method':14s}{'shots':>6s}{'base':>16s}{'new':>16s}{'HM':>16s}")
    print(f"{'zero_shot':14s}{0:>6d}" + "".join(f"{mean_std(b2n[('zero_shot', 0, s)]):>16s}" for s in ("base", "new", "hm")))
    for method in ("coop", "cocoop"):
        for k in args.shots:
            print(f"{method:14s}{k:>6d}" + "".join(f"{mean_std(b2n[(method, k, s)]):>16s}" for s in ("base", "new", "hm")))


if __name__ == "__main__":
    main()
