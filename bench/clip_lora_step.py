"""CLIP-LoRA optimiser-step time and memory: the world CLIP and a ViT-B/16-sized random CLIP, fp32 vs bf16
autocast, gradient checkpointing off vs on, side by side in one run.

    python bench/clip_lora_step.py [--steps 3] [--warmup 1] [--batch-world 32] [--batch-vit 4]
                                   [--models world vit-b16] [--precisions fp32 bf16] [--checkpointing off on]
                                   [--threads N] [--json FILE] [--quick]

Each row is the product's own path: ``ClipLoraHead.fit`` (the head's LoRA copy of the model via peft,
``TunedLogits`` in ``EncoderTrainer``, autocast, cross-entropy, backward, AdamW, cosine step) on a synthetic
``ImageSet`` of exactly one batch of generated JPEGs, so every epoch is one optimiser step and the head's
``on_epoch`` callback timestamps each step. One step = decode + augment the batch (DataLoader, 0 workers:
in the step, as with ``model.loader_threads: 0``; the ``data s`` column times that part alone) + the text
tower on every class prompt + the image tower on the batch + backward through both + AdamW. The first
``--warmup`` steps are dropped; ``s/step`` is the median of the next ``--steps``.

Memory is the peak resident set size (RSS, sampled every 5 ms by a thread) during ``fit`` minus the RSS
just before it, in a fresh process per row: it includes the head's copy of the model (``lora_towers``
deep-copies the backbone's CLIPModel; its size is printed as ``weights``), the LoRA moments, activations and
what the allocator keeps. It is not torch's allocator statistics (torch keeps none on the CPU). With
``--quick`` (the smoke test: a tiny batch, 1-layer towers for the random CLIP) rows run in this process and
their memory numbers are not isolated from each other.

What changes on a GPU box (``--device cuda`` runs the same rows there; memory is then torch's CUDA
allocator peak). On this CPU (AVX-512 with bf16 dot-product instructions, no AMX) bf16 autocast helps by a
factor that varies from run to run on the 2 shared cores (about 0.3x to 0.9x of fp32's step time in our
runs, slower in some smoke runs): the matmuls gain only what the AVX-512 bf16 units give, and autocast adds
casts. On an A100/H100 bf16 (or fp16) matmuls run on tensor cores at many times the fp32 rate, so autocast
is a large win there (typically 2-3x per step for ViT-B/16, more for ViT-L/14) and roughly halves the
activation memory; fp32 matmuls on Ampere and later can use TF32 instead
(``torch.backends.cuda.matmul.allow_tf32``). The time per image falls with batch until the GPU is
saturated, while activation memory grows linearly with batch; gradient checkpointing recomputes each
layer's forward inside the backward, about a third more time for most of the activation memory, which is
what lets ViT-L/14 at batch 32 fit on one card. Under torchrun with DistributedDataParallel the configured
batch is global: each of N ranks runs batch / N images, so per-rank activation memory shrinks by N and the
step time approaches 1/N plus an all-reduce of the LoRA gradients (a few MB) -- unlike these 2 shared CPU
cores, where processes only compete for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import FOOD_CLASSES, PeakRss, decode_seconds, photo_folder, vit_b16_random

TEMPLATE = "a photo of a {}."


def model_specs(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Per model: its id, class names, batch and the synthetic image folder (images as the model will see)."""
    from fewclip.backbones.model_source import WORLD_ALIAS
    from fewclip.world import CLASSES

    specs = []
    if "world" in args.models:
        images = photo_folder(work / "photos-64", classes=1, per_class=args.batch_world, size=(64, 64))
        specs.append(
            {
                "model": "world",
                "id": WORLD_ALIAS,
                "classes": list(CLASSES[:16]),
                "batch": args.batch_world,
                "images": str(images),
            }
        )
    if "vit-b16" in args.models:
        name = "vit-b16-random" if args.layers == 12 else f"vit-b16-random-{args.layers}layer"
        folder = vit_b16_random(work / name, args.layers)
        images = photo_folder(work / "photos-512x384", classes=1, per_class=args.batch_vit)
        specs.append(
            {"model": name, "id": str(folder), "classes": FOOD_CLASSES, "batch": args.batch_vit, "images": str(images)}
        )
    return specs


def measure(row: dict[str, Any]) -> dict[str, Any]:
    """One row: ``row['warmup'] + row['steps']`` clip_lora optimiser steps through ``ClipLoraHead.fit``."""
    from fewclip.backbones import ModelConfig, load_backbone
    from fewclip.heads import ImageSet, Task
    from fewclip.heads.encoders.clip_lora import ClipLoraConfig, ClipLoraHead

    backbone = load_backbone(ModelConfig(id=row["id"], device=row["device"]))
    cuda = backbone.device.type == "cuda"
    paths = sorted((Path(row["images"]) / "train" / "class_0").glob("*.jpg"))[: row["batch"]]
    train = ImageSet(paths, torch.arange(len(paths)) % len(row["classes"]))
    data_s = decode_seconds(train, backbone.transform, row["batch"])  # the step's decode + augment alone
    config = ClipLoraConfig(
        batch_size=row["batch"],
        iterations_per_shot=row["warmup"] + row["steps"],
        precision=row["precision"],
        gradient_checkpointing=row["checkpointing"],
        select="last",
    )
    stamps: list[float] = []
    task = Task(
        row["classes"],
        [TEMPLATE],
        backbone,
        seed=1,
        shots=1,
        workers=0,
        on_epoch=lambda _: stamps.append(time.perf_counter()),
    )
    head = ClipLoraHead(config)
    allocated_mb = 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        allocated_mb = torch.cuda.memory_allocated() / 2**20
    with PeakRss() as rss:
        base_mb = rss.now_mb()
        start = time.perf_counter()
        head.fit(task, train, None)
    # on a GPU: torch's allocator peak over what was allocated before fit (the tuned copy included), not RSS
    memory_mb = torch.cuda.max_memory_allocated() / 2**20 - allocated_mb if cuda else rss.peak_mb - base_mb
    steps = [b - a for a, b in zip([start] + stamps, stamps)][row["warmup"] :]
    weights_mb = sum(p.numel() * p.element_size() for p in backbone.model.parameters()) / 2**20
    return {
        **row,
        "step_times": steps,
        "s_per_step": statistics.median(steps),
        "data_s": data_s,
        "memory_mb": memory_mb,
        "memory_kind": "CUDA allocator peak" if cuda else "RSS peak",
        "rss_before_mb": base_mb,
        "weights_mb": weights_mb,
        "threads": torch.get_num_threads(),
        "final_train_loss": head.history_[-1]["train_loss"],
    }


def run_row(row: dict[str, Any], in_process: bool, threads: int | None) -> dict[str, Any]:
    if in_process:
        return measure(row)
    command = [sys.executable, __file__, "--child", json.dumps(row)] + (["--threads", str(threads)] if threads else [])
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"row {row['model']} {row['precision']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(results: list[dict[str, Any]]) -> None:
    """Side by side; ``bf16/fp32`` is the row's s/step over the fp32 row of the same model, batch and
    checkpointing, ``ckpt on/off`` its s/step over the same row without checkpointing."""

    def twin(r: dict[str, Any], **change: Any) -> dict[str, Any] | None:
        want = {**{k: r[k] for k in ("model", "batch", "precision", "checkpointing")}, **change}
        return next((o for o in results if all(o[k] == v for k, v in want.items())), None)

    print(
        f"\n{'model':24s} {'prec':4s} {'ckpt':4s} {'batch':>5s} {'s/step':>8s} {'ms/img':>8s} {'img/s':>7s} "
        f"{'data s':>7s} {'bf16/fp32':>9s} {'ckpt on/off':>11s} {'mem +MB':>8s} {'ckpt mem':>8s}"
    )
    for r in results:
        fp32, off = twin(r, precision="fp32"), twin(r, checkpointing=False)
        ratio = f"{r['s_per_step'] / fp32['s_per_step']:9.2f}" if fp32 and r["precision"] != "fp32" else f"{'-':>9s}"
        ckpt = f"{r['s_per_step'] / off['s_per_step']:11.2f}" if off and r["checkpointing"] else f"{'-':>11s}"
        mem = f"{r['memory_mb'] / off['memory_mb']:8.2f}" if off and r["checkpointing"] else f"{'-':>8s}"
        print(
            f"{r['model']:24s} {r['precision']:4s} {'on' if r['checkpointing'] else 'off':4s} {r['batch']:5d} "
            f"{r['s_per_step']:8.3f} {1000 * r['s_per_step'] / r['batch']:8.1f} {r['batch'] / r['s_per_step']:7.1f} "
            f"{r['data_s']:7.3f} {ratio} {ckpt} {r['memory_mb']:8.0f} {mem}"
        )
    for model in dict.fromkeys(r["model"] for r in results):
        first = next(r for r in results if r["model"] == model)
        print(
            f"  {model}: weights {first['weights_mb']:.0f} MB (copied once by the head: part of mem +MB, the "
            f"{first['memory_kind']} over fit), "
            f"{len(first['classes'])} class prompts per step, RSS before fit {first['rss_before_mb']:.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not timed")
    parser.add_argument("--batch-world", type=int, default=32, help="world CLIP batch (the paper's 32)")
    parser.add_argument("--batch-vit", type=int, default=4, help="ViT-B/16 batch (small: ~0.5 s an image here)")
    parser.add_argument("--layers", type=int, default=12, help="layers per tower of the random ViT-B/16 CLIP")
    parser.add_argument("--models", nargs="+", choices=["world", "vit-b16"], default=["world", "vit-b16"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], default=["fp32", "bf16"])
    parser.add_argument(
        "--checkpointing",
        nargs="+",
        choices=["off", "on"],
        default=["off", "on"],
        help="gradient checkpointing rows (on: fp32 only, unless --checkpointing-all)",
    )
    parser.add_argument("--checkpointing-all", action="store_true", help="checkpointing rows for every precision")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:i] (memory is then torch's CUDA allocator "
        "peak; not run in this repository's sessions, which have no GPU)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: batch 2, 1 warm-up + 2 steps, 1-layer random ViT-B/16, rows in this process",
    )
    parser.add_argument("--json", help="also write the rows (with every timed step) to this file")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every row
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    if args.quick:
        args.steps, args.warmup, args.batch_world, args.batch_vit, args.layers = 2, 1, 2, 2, 1
    load_before = os.getloadavg()
    specs = model_specs(args, Path(args.work))
    rows = [
        {
            **spec,
            "precision": precision,
            "checkpointing": ckpt == "on",
            "steps": args.steps,
            "warmup": args.warmup,
            "device": args.device,
        }
        for spec in specs
        for ckpt in args.checkpointing
        for precision in args.precisions
        if ckpt == "off" or precision == "fp32" or args.checkpointing_all
    ]
    print(
        f"clip_lora step: {args.warmup} warm-up + {args.steps} timed steps per row, torch threads "
        f"{torch.get_num_threads()}, {'in this process' if args.quick else 'one process per row'}"
    )
    print(f"load average before (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_before)}")
    results = []
    for row in rows:
        results.append(run_row(row, args.quick, args.threads))
        print(
            f"  {row['model']} {row['precision']} ckpt {'on' if row['checkpointing'] else 'off'}: "
            f"{results[-1]['s_per_step']:.3f} s/step",
            flush=True,
        )
    print_table(results)
    print(f"load average after (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
