"""Step time and peak memory of the heads that train through CLIP's towers -- CoOp, CoCoOp, CLIP-LoRA, CLIP-SVD and
PromptSRC -- at ImageNet scale (1,000 classes, the papers' batch sizes) on ViT-B/16's architecture with random
weights, fp32 and bf16, and the features stage's throughput. Written for a GPU; nothing is downloaded.

    python bench/gpu.py [--device auto] [--warmup 2] [--steps 5] [--classes 1000] [--precisions fp32 bf16]
                        [--methods coop cocoop clip_lora clip_svd promptsrc] [--feature-images 2048]
                        [--feature-batch 256] [--loader-threads 8] [--work DIR] [--out DIR] [--smoke]

The model: ``_common.vit_b16_config`` (vision 224 px, patch 16, width 768, 12 layers; text width 512, 12 layers,
77 positions, a 49,408-row embedding; projection 512) with random weights, saved once in hub format under
``--work``. Its byte tokenizer makes every word one token, and the class names are synthetic words with the token
counts of ImageNet's 1,000 names under OpenAI's BPE (``IMAGENET_NAME_TOKENS``), so the prompts are as long as
ImageNet's: the longest one sets the text tower's sequence length.

A row is one head at its config defaults, at its paper's batch (CoOp 32, CoCoOp 1, CLIP-LoRA 32, CLIP-SVD 32,
PromptSRC 4; CoCoOp's default is 8, its reference's 1), trained by its own ``fit`` on a training set of exactly
one batch: every epoch is then one optimiser step, and ``Task.on_epoch`` stamps each (after
``torch.cuda.synchronize`` on a GPU). One step:

- CoOp, CoCoOp (``training.features_loop``, on cached features: random 512-d vectors here): every class prompt
  with the learned context through the frozen text tower (CoCoOp: each image's own 1,000 prompts), the logits,
  cross-entropy, backward, SGD;
- CLIP-LoRA, CLIP-SVD, PromptSRC (``training.images_loop``): decoding and augmenting the batch's JPEGs (in the
  step: a one-step epoch loads in process), both towers forward with the 1,000 class prompts re-encoded
  (PromptSRC also runs the frozen image tower for its consistency terms), backward, AdamW or SGD. ``data ms``
  times the decoding and augmentation alone (500 x 375 JPEGs, ImageNet's typical size); in a real run DataLoader
  workers do it beside the GPU, so ``step ms - data ms`` is the device's share.

The first ``--warmup`` steps are not timed (they hold the set-up: the prompts, the head's copy of the towers,
CLIP-SVD's factorisation, PromptSRC's 60-template teacher, first CUDA calls); ``step ms`` is the median of the
next ``--steps``; ``img/s`` is the batch over it. fp32 rows run as fewclip runs them: without TF32.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the row's ``fit``, after ``reset_peak_memory_stats``:
the frozen model's weights (about 570 MiB in fp32) and, for CLIP-LoRA and CLIP-SVD, the head's copy of the towers
are in it. On a CPU it is the process's peak RSS, which the rows of one process share: a smoke check only.

Feature extraction, at ``model.precision`` fp32 and bf16: ``features: forward`` is ``Backbone.encode_images`` on
pre-made pixel tensors (the device's ceiling), ``features: stage`` is ``extract_features`` as ``fewclip features``
runs it (read, decode and preprocess in ``--loader-threads`` threads, forward, write the cache); ``step ms`` is
per batch of ``--feature-batch`` images, the better of two passes over ``--feature-images``.

On a GPU the table goes to ``bench/results/gpu.csv`` and ``gpu.md``; elsewhere, and with ``--smoke``, to a
temporary folder (or ``--out``). ``--smoke``: a tiny CLIP (``tiny_clip_config``: 32 px, width 32, 9 layers, so
that PromptSRC's depth 9 fits) on the CPU, 4 classes, batch 2, 1 warm-up and 1 timed step, 4 feature images:
every code path in seconds (``tests/test_bench_gpu.py``). The defaults are sized to finish well inside 10 minutes
on one H100 (an estimate: no GPU has run it yet); ``--steps`` and ``--methods`` shorten it.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from transformers import CLIPConfig

from _common import BENCH_WORDS, PeakRss, decode_seconds, photo_folder, random_clip, vit_b16_config
from fewclip.backbones import ModelConfig, load_backbone
from fewclip.backbones.protocol import Backbone
from fewclip.data.images import read_image
from fewclip.data.records import Record
from fewclip.features import FeatureCache, extract_features
from fewclip.heads import (
    ClipLoraHead,
    ClipSvdHead,
    CoCoOpHead,
    CoOpHead,
    FeatureSet,
    ImageSet,
    PromptSRCHead,
    Task,
)
from fewclip.heads.base import Head
from fewclip.heads.prompts.clip_templates import IMAGENET_TEMPLATES

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["method", "precision", "batch", "classes", "step_ms", "data_ms", "images_per_s", "peak_mib", "device"]
HEADER = ["method", "precision", "batch", "classes", "step ms", "data ms", "img/s", "peak MiB", "device"]

# Tokens per name of ImageNet's 1,000 class names under OpenAI's BPE, as {tokens: names}: open_clip's
# ``zero_shot_metadata.IMAGENET_CLASSNAMES`` through its ``SimpleTokenizer`` (the longest: "Mexican hairless dog
# (xoloitzcuintli)", 12 tokens).
IMAGENET_NAME_TOKENS = {1: 246, 2: 508, 3: 154, 4: 50, 5: 22, 6: 10, 7: 8, 9: 1, 12: 1}

HEADS: dict[str, type[Head]] = {
    "coop": CoOpHead,
    "cocoop": CoCoOpHead,
    "clip_lora": ClipLoraHead,
    "clip_svd": ClipSvdHead,
    "promptsrc": PromptSRCHead,
}
# Per head: the config key that counts its (one-step) epochs, other than ``epochs``, and the paper's batch where
# the head's default differs (CoCoOp: configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml).
STEP_KEY = {"clip_lora": "iterations_per_shot", "clip_svd": "iterations_per_shot"}
PAPER_BATCH = {"cocoop": 1}


def tiny_clip_config(tokens: int) -> Any:
    """A CLIP small enough for a CPU smoke run (32 px, patch 8, width 32, 2 heads, projection 16) with 9 layers per
    tower (PromptSRC's default depth) and 77 text positions, so that every head runs at its default settings."""
    shared = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 9, "num_attention_heads": 2}
    text = {
        **shared,
        "vocab_size": tokens,
        "max_position_embeddings": 77,
        "bos_token_id": tokens - 2,
        "eos_token_id": tokens - 1,
        "pad_token_id": tokens - 1,
    }
    vision = {**shared, "patch_size": 8, "image_size": 32}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def model_spec(smoke: bool) -> tuple[str, Callable[[int], Any], tuple[int, int]]:
    """The model's folder stem, its config for a tokenizer of so many ids, and the JPEGs' size: ViT-B/16 and
    ImageNet's typical 500 x 375, or for ``--smoke`` the tiny CLIP and small images."""
    if smoke:
        return "tiny-clip", tiny_clip_config, (64, 48)
    return "vit-b16-random", lambda tokens: vit_b16_config(12, tokens), (500, 375)


def name_word(index: int, count: int) -> str:
    """Word ``index`` of ``count``: 'zq' and base-4 digits in the letters j, k, v, x. No other word of the
    tokenizer starts with two of these letters and 'zq' is only at the start, so each merges into one token."""
    digits = 5
    while 4**digits < count:
        digits += 1
    letters = "".join("jkvx"[(index // 4**d) % 4] for d in range(digits))
    return "zq" + letters


def class_names(count: int) -> list[str]:
    """``count`` distinct names whose token counts follow ImageNet's (``IMAGENET_NAME_TOKENS``, sampled evenly,
    longest first): name i is word i followed by the next words."""
    lengths = sorted((k for k, n in IMAGENET_NAME_TOKENS.items() for _ in range(n)), reverse=True)
    words = [name_word(i, count) for i in range(count)]
    picked = [lengths[i * len(lengths) // count] for i in range(count)]
    return [" ".join(words[(i + j) % count] for j in range(k)) for i, k in enumerate(picked)]


def tokenizer_words(names: list[str]) -> list[str]:
    """Every word of the class names, of PromptSRC's 60 ImageNet templates and of the benchmarks' prompts."""
    template_words = re.findall(r"[a-z]+", " ".join(IMAGENET_TEMPLATES).lower())
    return sorted(set(BENCH_WORDS) | set(template_words) | {w for name in names for w in name.split()})


def check_name_tokens(backbone: Backbone, names: list[str]) -> int:
    """The longest name's token count, after checking that every word of every name is one token."""
    counts = [len(backbone.tokens.word_ids(name)) for name in names]
    wrong = [(name, n) for name, n in zip(names, counts) if n != len(name.split())]
    if wrong:
        raise RuntimeError(f"the bench tokenizer splits class names into more tokens than words: {wrong[:3]}")
    return max(counts)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "cpu"
    with open("/proc/cpuinfo") as info:
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    return f"{model} ({torch.get_num_threads()} threads)"


class PeakMemory:
    """Peak memory while active, in MiB: torch's CUDA allocator peak on a GPU (reset on entry), else the
    process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib = device, 0.0
        self.rss = PeakRss() if device.type != "cuda" else None

    def __enter__(self) -> "PeakMemory":
        if self.rss is not None:
            self.rss.__enter__()
        else:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.rss is not None:
            self.rss.__exit__(*exc)
            self.mib = self.rss.peak_mb
        else:
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (method, precision): the method, precision, batch and the head's config (its defaults at the
    paper's batch, or ``--batch``; ``warmup + steps`` epochs of one step each; the last epoch kept, no calibration)."""
    rows = []
    for method in args.methods:
        head = HEADS[method]
        keys: dict[str, Any] = {STEP_KEY.get(method, "epochs"): args.warmup + args.steps}
        batch = args.batch or PAPER_BATCH.get(method)
        keys.update({"batch_size": batch} if batch else {})
        keys.update({"select": "last"} if "select" in head.Config.model_fields else {})
        keys.update({"calibrate": False} if "calibrate" in head.Config.model_fields else {})
        for precision in args.precisions:
            config = head.Config(**keys, precision=precision)
            rows.append({"method": method, "precision": precision, "batch": config.batch_size, "config": config})
    return rows


def train_row(
    row: dict[str, Any], args: argparse.Namespace, backbone: Backbone, names: list[str], photos: list[Path]
) -> dict[str, Any]:
    """Fit the row's head for ``warmup + steps`` one-step epochs; the timed steps, data time and peak memory."""
    head_class, batch, device = HEADS[row["method"]], row["batch"], backbone.device
    labels = torch.arange(batch) % len(names)
    data_ms: float | None = None
    train: ImageSet | FeatureSet
    if head_class.tunes_encoders:
        train = ImageSet(photos[:batch], labels)
        data_ms = 1000 * decode_seconds(train, backbone.transform, batch)
    else:  # cached features: any (batch, dim) vectors train the same way
        train = FeatureSet(torch.randn(batch, backbone.dim, generator=torch.Generator().manual_seed(0)), labels)
    stamps: list[float] = []

    def stamp(_: dict[str, float]) -> None:
        synchronize(device)
        stamps.append(time.perf_counter())

    task = Task(names, ["a photo of a {}."], backbone, seed=1, shots=1, on_epoch=stamp)
    head = head_class(row["config"])
    with PeakMemory(device) as memory:
        head.fit(task, train, None)
    if len(stamps) != args.warmup + args.steps:
        raise RuntimeError(f"{row['method']}: {len(stamps)} epochs for {args.warmup + args.steps} one-step epochs")
    steps = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup - 1 :]
    del head
    release(device)
    step_ms = 1000 * statistics.median(steps)
    return {
        **{k: v for k, v in row.items() if k != "config"},
        "classes": len(names),
        "step_ms": step_ms,
        "data_ms": data_ms,
        "images_per_s": 1000 * batch / step_ms,
        "peak_mib": memory.mib,
        "device": device_name(device),
    }


def release(device: torch.device) -> None:
    """Return what the last row left to the allocator, so the next row's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def feature_rows(args: argparse.Namespace, model: Path, photos: Path, device: torch.device) -> Iterator[dict[str, Any]]:
    """Per precision: the bare forward on pre-made pixels and the features stage, over the same images."""
    paths = sorted((photos / "train" / "class_0").glob("*.jpg"))[: args.feature_images]
    pixels = None
    for precision in args.precisions:
        backbone = load_backbone(ModelConfig(id=str(model), device=str(device), precision=precision))
        if pixels is None:  # the same preprocessing at every precision
            pixels = torch.from_numpy(np.stack([backbone.transform(read_image(p)) for p in paths]))
        yield from feature_pair(args, backbone, paths, pixels, photos)
        del backbone
        release(device)


def feature_pair(
    args: argparse.Namespace, backbone: Backbone, paths: list[Path], pixels: torch.Tensor, photos: Path
) -> Iterator[dict[str, Any]]:
    """``features: forward`` and ``features: stage`` rows of one backbone (its precision)."""
    records = [Record(str(p), 0, "c", hashlib.sha1(p.read_bytes()).hexdigest()) for p in paths]  # as prepare does
    batch, device = args.feature_batch, backbone.device
    backbone.encode_images(pixels[:batch])  # first calls

    def forward() -> None:
        for start in range(0, len(pixels), batch):
            backbone.encode_images(pixels[start : start + batch])

    def stage() -> None:
        with tempfile.TemporaryDirectory() as folder:
            cache = FeatureCache(Path(folder), backbone.fingerprint())
            extract_features(records, photos, backbone, cache, batch, args.loader_threads, progress=False)

    for name, run in (("features: forward", forward), ("features: stage", stage)):
        seconds, mib = best_of(run, 2, device)
        yield {
            "method": name,
            "precision": backbone.config.precision,
            "batch": batch,
            "classes": None,
            "step_ms": 1000 * seconds / -(-len(paths) // batch),
            "data_ms": None,
            "images_per_s": len(paths) / seconds,
            "peak_mib": mib,
            "device": device_name(device),
        }


def best_of(run: Callable[[], None], repeats: int, device: torch.device) -> tuple[float, float]:
    """The shortest of ``repeats`` timed runs, and the peak memory over them."""
    times = []
    with PeakMemory(device) as memory:
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return min(times), memory.mib


def cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in results:
        values = [cell(r[c], 0 if c == "peak_mib" else 1) for c in COLUMNS]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def output_folder(args: argparse.Namespace, device: torch.device) -> Path:
    """Where the CSV and markdown go: ``--out``; else bench/results for a full run on a GPU, else a new
    temporary folder (a CPU's or a smoke run's figures are not results)."""
    if args.out:
        return Path(args.out)
    if device.type == "cuda" and not args.smoke:
        return RESULTS
    return Path(tempfile.mkdtemp(prefix="fewclip-gpu-bench-"))


def write_results(folder: Path, results: list[dict[str, Any]], notes: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "gpu.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if r[k] is None else r[k] for k in COLUMNS} for r in results)
    (folder / "gpu.md").write_text("\n".join(f"- {n}" for n in notes) + "\n\n" + markdown_table(results) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one, else cpu), cpu or cuda[:i]")
    parser.add_argument("--warmup", type=int, default=2, help="steps run first and not timed (at least 1)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (their median is reported)")
    parser.add_argument("--classes", type=int, default=1000, help="class prompts (ImageNet's 1,000)")
    parser.add_argument("--methods", nargs="+", choices=list(HEADS), default=list(HEADS))
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, help="one batch for every method (default: each paper's)")
    parser.add_argument("--feature-images", type=int, default=2048, help="images the features rows encode")
    parser.add_argument("--feature-batch", type=int, default=256, help="images per forward in the features rows")
    parser.add_argument("--loader-threads", type=int, default=8, help="the features stage's model.loader_threads")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"), help="model, images")
    parser.add_argument("--out", help="folder for gpu.csv and gpu.md (default: see the docstring)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny CLIP on the CPU, 4 classes, batch 2, 1 + 1 steps, 4 feature images"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup, args.steps, args.classes, args.batch = 1, 1, 4, 2
        args.feature_images, args.feature_batch, args.loader_threads = 4, 2, 1
        args.device = "cpu" if args.device == "auto" else args.device
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first step holds the head's set-up")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    began = time.perf_counter()
    work, names = Path(args.work), class_names(args.classes)
    stem, make_config, size = model_spec(args.smoke)
    model = random_clip(work / f"{stem}-{args.classes}cls", make_config, tokenizer_words(names))
    batches = max([r["batch"] for r in training_rows(args)] + [args.feature_images])
    photos = photo_folder(work / f"photos-{size[0]}x{size[1]}-{batches}", 1, batches, size, test_per_class=0)
    paths = sorted((photos / "train" / "class_0").glob("*.jpg"))
    backbone = load_backbone(ModelConfig(id=str(model), device=args.device))
    device = backbone.device
    longest = check_name_tokens(backbone, names)
    print(
        f"bench/gpu.py on {device_name(device)}: {args.classes} classes (names of 1-{longest} tokens), "
        f"{args.warmup} warm-up + {args.steps} timed steps per row, model {model}",
        flush=True,
    )
    results = []
    for row in training_rows(args):
        results.append(train_row(row, args, backbone, names, paths))
        print(f"  {row['method']} {row['precision']}: {results[-1]['step_ms']:.1f} ms/step", flush=True)
    del backbone
    release(device)
    for result in feature_rows(args, model, photos, device):
        results.append(result)
        print(f"  {result['method']} {result['precision']}: {result['images_per_s']:.1f} img/s", flush=True)
    notes = [
        f"device: {device_name(device)}; torch {torch.__version__}"
        + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""),
        f"model: {'tiny CLIP (smoke)' if args.smoke else 'ViT-B/16 architecture, random weights'}; "
        f"{args.classes} classes, names of 1-{longest} tokens",
        f"steps: {args.warmup} warm-up + {args.steps} timed (median); features: {len(paths[: args.feature_images])} "
        f"images, {args.loader_threads} loader threads",
        "peak MiB: "
        + ("torch.cuda.max_memory_allocated per row" if device.type == "cuda" else "process peak RSS (not isolated)"),
        f"wall time of the whole run: {time.perf_counter() - began:.0f} s",
    ]
    print("\n" + markdown_table(results) + "\n")
    folder = output_folder(args, device)
    write_results(folder, results, notes)
    print("\n".join(notes))
    print(f"written: {folder / 'gpu.csv'}, {folder / 'gpu.md'}")


if __name__ == "__main__":
    main()
