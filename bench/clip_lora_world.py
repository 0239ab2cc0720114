"""CLIP-LoRA at its paper's defaults on the world CLIP, beside zero-shot and the best frozen-feature heads.

    python bench/clip_lora_world.py [--domain sketch] [--shots 1] [--seeds 1 2 3] [--loader-threads N]
                                    [--methods zero_shot clip_lora ...] [--work DIR] [--out PREFIX]

One base-to-new run of the default world config (16 classes, train on the first 8, 8 held out) in
``domain`` with clip_lora at its defaults (rank 2, alpha 1, dropout 0.25, q/k/v of every layer, AdamW lr 2e-4,
batch 32, 500 x shots iterations, cosine) and, by default, the heads that were best at 1-2 shots on sketches in
bench/results/world_findings.md (zs_lp, clip_adapter, coop, linear_probe). Writes ``<out>.csv`` (one row per
method, shots and split: seed mean and std, the 95% Wilson interval of the seed-mean accuracy over the test
images, mean training seconds) and ``<out>.md`` (the tables, the paired tests of clip_lora against every other
head, the load average). clip_lora trains inside the encoders: every step runs images through the towers, so
it is by far the slowest unit here; the CPU time it took is in the table (train s). ``--loader-threads N``
sets the DataLoader workers (the batches are the same for any N; loaders of one or two batches, e.g. every
1-shot epoch, decode in process anyway).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fewclip.runner.config import default_cache_dir, load_config
from fewclip.runner.demo import embedded_config
from fewclip.fileio import read_csv, write_csv
from fewclip.runner.layout import RunLayout
from fewclip.runner.pipeline import run
from fewclip.report.evidence import read_evidence
from fewclip.stats import mean_std, paired_hm_test, paired_test, wilson_interval

METHODS = ["zero_shot", "clip_lora", "zs_lp", "clip_adapter", "coop", "linear_probe"]
COLUMNS = (
    "domain",
    "method",
    "shots",
    "split",
    "n_seeds",
    "n_test",
    "accuracy_mean",
    "accuracy_std",
    "acc_low",
    "acc_high",
    "train_seconds_mean",
)


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def table_rows(summary: list[dict[str, str]], domain: str) -> list[dict[str, str]]:
    """One row per (method, shots, split) over its seeds (hm rows: the seed mean of each seed's hm)."""
    groups: dict[tuple[str, int, str], list[dict[str, str]]] = defaultdict(list)
    for row in summary:
        groups[(row["method"], int(row["shots"]), row["split"])].append(row)
    rows = []
    for (method, shots, split), members in groups.items():
        mean, std = mean_std([float(r["accuracy"]) for r in members])
        n_test = int(members[0]["n_eval"]) if members[0]["n_eval"] else 0
        low, high = wilson_interval(mean * n_test, n_test) if n_test else (float("nan"), float("nan"))
        seconds = sum(float(r["train_seconds"]) for r in members) / len(members)
        rows.append(
            dict(
                zip(
                    COLUMNS,
                    (
                        domain,
                        method,
                        shots,
                        split,
                        len(members),
                        n_test or "",
                        f"{mean:.6f}",
                        f"{std:.6f}",
                        f"{low:.6f}" if n_test else "",
                        f"{high:.6f}" if n_test else "",
                        f"{seconds:.1f}",
                    ),
                )
            )
        )
    return rows


def markdown_table(rows: list[dict[str, str]], split: str) -> str:
    lines = [
        f"| {split} | shots | seeds | test images | accuracy % (mean ± std) | 95% interval (test images) | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["split"] == split):
        interval = f"{100 * float(r['acc_low']):.1f}-{100 * float(r['acc_high']):.1f}" if r["acc_low"] else "-"
        lines.append(
            f"| {r['method']} | {r['shots']} | {r['n_seeds']} | {r['n_test'] or '-'} | "
            f"{100 * float(r['accuracy_mean']):.1f} ± {100 * float(r['accuracy_std']):.1f} | {interval} | "
            f"{r['train_seconds_mean']} |"
        )
    return "\n".join(lines)


def comparisons(layout: RunLayout, summary: list[dict[str, str]], shots: list[int], methods: list[str]) -> str:
    """clip_lora - X per split and budget: accuracy points (seed means) and the report's paired sign-flip test
    over the same test images; on hm, the report's paired randomisation test of the harmonic mean."""
    evidence = read_evidence(layout, summary)
    shot_free = {r["method"] for r in summary if r["shots"] == "0"}
    lines = [
        "| clip_lora - X (p) | split | " + " | ".join(f"{k} shots" for k in shots) + " |",
        "|---|---|" + "---:|" * len(shots),
    ]
    for other in (m for m in methods if m != "clip_lora"):
        for split in ("base", "new", "hm"):
            cells = []
            for k in shots:
                sides = [
                    (
                        evidence.get("clip_lora", k, part),
                        evidence.get(other, 0 if other in shot_free else k, part),
                        evidence.labels.get(part),
                    )
                    for part in (("base", "new") if split == "hm" else (split,))
                ]
                if any(a is None or b is None for a, b, _ in sides):
                    cells.append("-")
                    continue
                test = paired_hm_test(*sides) if split == "hm" else paired_test(*sides[0])
                p = "< 0.001" if test.p_value < 0.001 else f"= {test.p_value:.3f}"
                cells.append(f"{100 * test.difference:+.1f} (p {p})")
            if any(c != "-" for c in cells):
                lines.append(f"| {other} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", default="sketch")
    parser.add_argument("--shots", type=int, nargs="+", default=[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--loader-threads", type=int, help="model.loader_threads (default: the config's)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-clip-lora-world"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "clip_lora_world"))
    args = parser.parse_args()
    work = Path(args.work) / args.domain
    overrides = [
        f"dataset.domain={args.domain}",
        f"splits.seeds={args.seeds}",
        f"few_shot.shots={args.shots}",
        f"methods={args.methods}",
        "splits.subsample=base2new",
        "output.progress=false",
        "output.figures=false",
        f"output.dir={work}",
    ]
    if args.loader_threads is not None:
        overrides.append(f"model.loader_threads={args.loader_threads}")
    started = load()
    start = time.perf_counter()
    # force: another --shots/--seeds on the same --work reuses every unit already trained with the same inputs
    run(load_config(None, overrides, base=embedded_config(Path(default_cache_dir()))), force=True)
    wall = time.perf_counter() - start
    layout = RunLayout(work)
    summary = read_csv(layout.summary)
    rows = table_rows(summary, args.domain)
    write_csv(Path(args.out + ".csv"), COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
    text = (
        "\n\n".join(
            [
                "# bench/clip_lora_world.py output",
                f"Command: `python bench/clip_lora_world.py --domain {args.domain} --shots {' '.join(map(str, args.shots))} "
                f"--seeds {' '.join(map(str, args.seeds))}`; run wall time {wall:.0f} s (training units that a previous "
                f"run in the same --work left are reused); {started} at the start, {load()} at the end (2 CPU cores, "
                "shared).",
                f"Domain {args.domain}, base-to-new: 8 base classes trained, 8 new ones held out. Accuracy over the seeds; "
                "the interval is the 95% Wilson interval of the seed-mean accuracy over the test images (test-set "
                "sampling only: the seed spread is the ± std).",
                *(markdown_table(rows, split) for split in ("base", "new", "hm")),
                "clip_lora against every other head: accuracy points and the two-sided p of the paired sign-flip test "
                "over the same test images (fewclip.stats.paired_test, the report's test).",
                comparisons(layout, summary, args.shots, args.methods),
            ]
        )
        + "\n"
    )
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
