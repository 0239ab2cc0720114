"""The reference experiment at full size, with the real architecture and random weights: wall time per
stage, fp32 and bf16, and where the time goes.

ViT-B/32 (default ``CLIPConfig``, random init, hub format, CLIP-format tokenizer), 10 classes, 750 train /
250 test synthetic 512x384 JPEGs per class (generated once into the work folder), shots 8/16/32/64/128,
3 seeds, zero-shot + linear probe + CoOp with the settings of ``configs/food101.yaml`` (its dataset and
model blocks replaced by the local ones). Every precision runs on a cold feature cache.

    python bench/reference_experiment.py                        # full size (long)
    python bench/reference_experiment.py --classes 3 --train-per-class 24 --test-per-class 8 \
        --shots 2 4 --seeds 1 --coop-epochs 2 --precisions fp32 bf16    # smoke test, about a minute
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _common import photo_folder, vit_b32_random
from fewclip.runner.config import load_config
from fewclip.fileio import read_csv
from fewclip.runner.pipeline import STAGES
from fewclip.runner.run_context import RunContext

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "food101.yaml"


def reference_config(args: argparse.Namespace, model_dir: Path, data: Path, precision: str, work: Path) -> dict:
    """configs/food101.yaml with the local model and images, the chosen size and precision."""
    config = yaml.safe_load(REFERENCE.read_text())
    config["model"] = {**config["model"], "id": str(model_dir), "device": args.device, "precision": precision}
    config["dataset"] = {"source": "folder", "path": str(data)}
    config["few_shot"] = {"shots": args.shots}
    config["splits"] = {**config["splits"], "seeds": args.seeds}
    config["coop"] = {
        **config["coop"],
        "precision": precision,
        **({"epochs": args.coop_epochs} if args.coop_epochs else {}),
    }
    config["output"] = {"dir": str(work / f"run-{precision}"), "progress": args.progress}
    config["cache"] = {"dir": str(work / f"cache-{precision}")}  # cold: the features stage is timed too
    return config


def run_timed(config: dict) -> tuple[dict[str, float], RunContext]:
    ctx = RunContext(load_config(None, [], base=config))
    seconds = {}
    for name, stage in STAGES.items():
        start = time.perf_counter()
        stage(ctx)
        seconds[name] = time.perf_counter() - start
    return seconds, ctx


def where_time_goes(ctx: RunContext) -> dict[str, float]:
    """Training seconds per method (summed over units), from summary.csv."""
    per_method: dict[str, float] = {}
    seen = set()
    for row in read_csv(ctx.layout.summary):
        unit = (row["method"], row["shots"], row["seed"])
        if unit not in seen:  # a unit has one row per split; its training time once
            seen.add(unit)
            per_method[row["method"]] = per_method.get(row["method"], 0.0) + float(row["train_seconds"])
    return per_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=750)
    parser.add_argument("--test-per-class", type=int, default=250)
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--coop-epochs", type=int, help="default: the reference's (configs/food101.yaml)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's); 1 holds up under contention"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--progress", action="store_true", help="show the stages' progress bars")
    parser.add_argument("--keep", action="store_true", help="keep the run folders and feature caches")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(args.work)
    model_dir = vit_b32_random(work / "vit-b32-random")
    start = time.perf_counter()
    data = photo_folder(
        work / f"reference-{args.classes}x{args.train_per_class}+{args.test_per_class}",
        args.classes,
        args.train_per_class,
        test_per_class=args.test_per_class,
    )
    print(f"images ready in {time.perf_counter() - start:.1f} s: {data}")
    runs = work / "reference-runs"
    results = {}
    for precision in args.precisions:
        shutil.rmtree(runs, ignore_errors=True)
        config = reference_config(args, model_dir, data, precision, runs)
        seconds, ctx = run_timed(config)
        results[precision] = (seconds, where_time_goes(ctx))
        if args.keep:
            shutil.copytree(runs, work / f"reference-runs-{precision}", dirs_exist_ok=True)
    shutil.rmtree(runs, ignore_errors=True)
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, tuple[dict[str, float], dict[str, float]]]) -> None:
    n_train, n_test = args.classes * args.train_per_class, args.classes * args.test_per_class
    print(
        f"\nViT-B/32 random weights, {args.classes} classes, {n_train} train / {n_test} test JPEGs 512x384, "
        f"shots {args.shots}, seeds {args.seeds}, zero_shot + linear_probe + coop"
        f"{f' ({args.coop_epochs} CoOp epochs)' if args.coop_epochs else ''}; torch threads {torch.get_num_threads()}"
    )
    precisions = list(results)
    print(
        f"\n{'stage':12s}"
        + "".join(f"{p:>12s}" for p in precisions)
        + ("   bf16 / fp32" if {"fp32", "bf16"} <= set(results) else "")
    )
    for stage in [*STAGES, "total"]:
        values = [sum(results[p][0].values()) if stage == "total" else results[p][0][stage] for p in precisions]
        ratio = ""
        if {"fp32", "bf16"} <= set(results):
            fp32 = values[precisions.index("fp32")]
            ratio = f"   {values[precisions.index('bf16')] / fp32:5.2f}" if fp32 else ""
        print(f"{stage:12s}" + "".join(f"{v:11.1f}s" for v in values) + ratio)
    print("\nwhere the train stage goes (seconds summed over units):")
    for method in results[precisions[0]][1]:
        print(f"  {method:12s}" + "".join(f"{results[p][1].get(method, 0.0):11.1f}s" for p in precisions))
    for p in precisions:
        total = sum(results[p][0].values())
        shares = ", ".join(f"{stage} {100 * s / total:.0f}%" for stage, s in results[p][0].items())
        print(f"  {p} share of the total: {shares}")


if __name__ == "__main__":
    main()
