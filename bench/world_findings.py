"""The papers' comparisons, re-run on the embedded world with the shipped world CLIP.

    python bench/world_findings.py [--domains photo sketch] [--seeds 1 2 3] [--shots 1 2 4 8 16]
                                   [--methods ...] [--work DIR] [--csv FILE]

One base-to-new run per domain (the default run's 16 world classes; train on the first 8), with every
registered head at its paper's defaults (epochs included) and every shot budget: the photo domain the
CLIP was pretrained on (zero-shot ~0.9) and the sketch domain it never saw (the default run's, zero-shot
~0.3). Writes one CSV row per (domain, method, shots, split) with the mean and std of accuracy over the
seeds, and prints one markdown table per domain and split (base: every head; new and hm: the heads that
transfer to new class names).

The findings it lets one check (Tip-Adapter-F > Tip-Adapter > zero-shot at low shots; CLIP-Adapter and
linear probes weak at 1-2 shots; KgCoOp and ProGrad keep the new-class accuracy CoOp loses; TCP above KgCoOp on
base and new classes; CLAP without validation close to validated methods; GDA above Tip-Adapter-F and the linear
probe; LP++ above the linear probe and level with Tip-Adapter-F; ProKeR above GDA and Tip-Adapter; TaskRes above
zero-shot and CoOp) are hypotheses; this prints what comes out. A comparison whose heads were not both run prints
"-". Figures and saliency are off (output.figures=false): they cost more than the training here and
the tables do not need them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fewclip.runner.config import default_cache_dir, load_config
from fewclip.runner.demo import embedded_config
from fewclip.fileio import read_csv, write_csv
from fewclip.heads import HEADS, list_heads
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import run
from fewclip.report.evidence import read_evidence
from fewclip.stats import paired_test

SPLITS = ("base", "new", "hm")
Key = tuple[str, str, int, str]  # (domain, method, shots, split)
# The papers' findings as paired comparisons (A, B, split): A - B in points and the report's paired test
# over seeds (fewclip.stats.paired_test) at every shot budget.
COMPARISONS = [
    ("tip_adapter_f", "tip_adapter", "base"),
    ("tip_adapter", "zero_shot", "base"),
    ("linear_probe", "zero_shot", "base"),
    ("clip_adapter", "zero_shot", "base"),
    ("linear_probe", "zs_lp", "base"),
    ("kgcoop", "coop", "new"),
    ("prograd", "coop", "new"),
    ("tcp", "kgcoop", "base"),
    ("tcp", "kgcoop", "new"),
    ("coop", "zero_shot", "new"),
    ("clap", "zs_lp", "base"),
    ("clap", "clip_adapter", "base"),
    ("gda", "tip_adapter_f", "base"),
    ("gda", "linear_probe", "base"),
    ("lp_pp", "linear_probe", "base"),
    ("lp_pp", "tip_adapter_f", "base"),
    ("proker", "gda", "base"),
    ("proker", "linear_probe", "base"),
    ("proker", "tip_adapter", "base"),
    ("taskres", "zero_shot", "base"),
    ("taskres", "coop", "base"),
]


def run_domain(domain: str, args: argparse.Namespace, base: dict) -> dict[Key, tuple[int, float, float]]:
    """Run the default config in ``domain``; returns (n_seeds, mean, std) of accuracy per unit of the table."""
    overrides = [
        f"dataset.domain={domain}",
        f"splits.seeds={args.seeds}",
        f"few_shot.shots={args.shots}",
        f"methods={args.methods}",
        "splits.subsample=base2new",
        "output.progress=false",
        "output.figures=false",
        f"output.dir={Path(args.work) / domain}",
    ]
    start = time.perf_counter()
    run(load_config(None, overrides, base=base))
    print(f"[{domain}] ran in {time.perf_counter() - start:.0f} s")
    table = Path(args.work) / domain / "results" / "aggregate" / "accuracy_table.csv"
    return {
        (domain, r["method"], int(r["shots"]), r["split"]): (
            int(r["n_seeds"]),
            float(r["accuracy_mean"]),
            float(r["accuracy_std"]),
        )
        for r in read_csv(table)
    }


def cell(values: dict[Key, tuple[int, float, float]], key: Key) -> str:
    if key not in values:
        return "-"
    _, mean, std = values[key]
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown(values: dict[Key, tuple[int, float, float]], domain: str, split: str, shots: list[int]) -> str:
    """Heads x shot budgets; zero-shot (shot-free) repeats its one value in every column."""
    methods = list(dict.fromkeys(m for d, m, _, s in values if d == domain and s == split))
    lines = [f"| {domain}, {split} | " + " | ".join(f"{k} shots" for k in shots) + " |", "|---|" + "---:|" * len(shots)]
    for method in methods:
        shot_free = (domain, method, 0, split) in values
        cells = [cell(values, (domain, method, 0 if shot_free else k, split)) for k in shots]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons(run_dir: Path, domain: str, shots: list[int]) -> str:
    """Markdown: one row per comparison in COMPARISONS, one cell per budget: A - B (points) and its p-value."""
    layout = RunLayout(run_dir)
    summary = read_csv(layout.summary)
    evidence = read_evidence(layout, summary)
    shot_free = {r["method"] for r in summary if r["shots"] == "0"}
    lines = [
        f"| {domain}: A - B (p) | " + " | ".join(f"{k} shots" for k in shots) + " |",
        "|---|" + "---:|" * len(shots),
    ]
    for a, b, split in COMPARISONS:
        cells = []
        for k in shots:
            right_a = evidence.get(a, 0 if a in shot_free else k, split)
            right_b = evidence.get(b, 0 if b in shot_free else k, split)
            if right_a is None or right_b is None:
                cells.append("-")
                continue
            test = paired_test(right_a, right_b, evidence.labels[split])
            cells.append(
                f"{100 * test.difference:+.1f} (p {'< 0.001' if test.p_value < 0.001 else f'= {test.p_value:.3f}'})"
            )
        lines.append(f"| {a} - {b}, {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domains", nargs="+", default=["photo", "sketch"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    # the heads that tune the encoders train for minutes per unit here: bench/clip_lora_world.py runs them
    parser.add_argument("--methods", nargs="+", default=[n for n in list_heads() if not HEADS.get(n).tunes_encoders])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-world-findings"))
    parser.add_argument("--csv", help="where the table goes (default: <work>/world_findings.csv)")
    args = parser.parse_args()
    base = embedded_config(Path(default_cache_dir()))
    values: dict[Key, tuple[int, float, float]] = {}
    for domain in args.domains:
        values.update(run_domain(domain, args, base))

    csv_path = Path(args.csv or Path(args.work) / "world_findings.csv")
    write_csv(
        csv_path,
        ("domain", "method", "shots", "split", "n_seeds", "accuracy_mean", "accuracy_std"),
        ((*key, n, f"{mean:.6f}", f"{std:.6f}") for key, (n, mean, std) in values.items()),
    )
    print(
        f"\nAccuracy (%), mean ± std over seeds {args.seeds}; 8 base classes trained, 8 new ones held out; "
        f"written to {csv_path}\n"
    )
    by_split = defaultdict(set)
    for domain, _, _, split in values:
        by_split[domain].add(split)
    for domain in args.domains:
        for split in (s for s in SPLITS if s in by_split[domain]):
            print(markdown(values, domain, split, args.shots) + "\n")
    print(
        "The findings as paired comparisons: A - B in accuracy points (seed means), two-sided p of the paired "
        "sign-flip test over seeds on the same 320 test images (the report's test)\n"
    )
    for domain in args.domains:
        print(comparisons(Path(args.work) / domain, domain, args.shots) + "\n")


if __name__ == "__main__":
    main()
