"""Captioning on the offline default (the shipped world CLIP + world GPT-2 decoder, world caption images),
measured side by side in one run. Nothing is downloaded.

    python bench/captioning.py [--images 64] [--batch 32] [--steps 5] [--method adapter] [--threads 2]
                               [--skip-memory] [--only generate|train|memory]

1. Generation: batched greedy decoding with the KV cache (``caption.decode.generate_ids``, ``--batch``
   images per call) vs a naive one-image, no-cache token loop (every step re-runs the whole sequence) on
   the same decoder and encoder tokens, same max length; the captions are checked identical. Decoding
   only: both get the same precomputed encoder tokens. The captioner is trained ``--train-epochs`` first,
   so that captions differ between images (a model as built says one caption of every image).
2. Training step (loss, backward, AdamW step, batch ``--batch``): encoder tokens read from the
   content-addressed cache (``caption.encoder_cache.EncoderTokens`` within budget) vs the frozen encoder
   run on the batch's images every step (budget 0). The one-off cost of filling the cache is printed too.
3. Peak memory of one training step at batch 32, per method, in a fresh process: resident set size
   sampled during the step (RSS after loading the model beside it) and the process's lifetime peak.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import _common  # noqa: F401  (offline environment variables)
from fewclip.backbones.model_source import WORLD_ALIAS
from fewclip.caption.decode import DecodeConfig, generate_ids
from fewclip.caption.encoder_cache import EncoderTokens
from fewclip.caption.model import CaptionModel, CaptionModelConfig
from fewclip.caption.train import CaptionTrainConfig, caption_token_ids, pad_batch, train_captioner
from fewclip.fileio import read_json
from fewclip.world import DECODER
from fewclip.world.captions import IMAGE_DIR, WorldCaptionConfig, write_world_captions


def world_images(folder: Path, n_images: int) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """sha1 -> image file, and (sha1, caption) training examples (every reference caption), of a world set."""
    captions_file = write_world_captions(folder, WorldCaptionConfig(n_images=n_images))
    data = read_json(captions_file)
    images = {}
    by_id = {}
    for entry in data["images"]:
        path = folder / IMAGE_DIR / entry["file_name"]
        sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
        images[sha1], by_id[entry["id"]] = path, sha1
    return images, [(by_id[a["image_id"]], a["caption"]) for a in data["annotations"]]


def caption_model(method: str) -> CaptionModel:
    return CaptionModel(CaptionModelConfig(encoder=WORLD_ALIAS, decoder=str(DECODER), method=method, device="cpu"))


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    return (time.perf_counter() - start) / repeats, result


def generation_bench(model: CaptionModel, tokens: torch.Tensor, batch: int, max_length: int, epochs: int) -> None:
    settings = DecodeConfig(max_length=max_length)
    n = len(tokens)

    def batched() -> list[list[int]]:
        return [
            ids
            for start in range(0, n, batch)
            for ids in generate_ids(model, tokens[start : start + batch], settings, use_cache=True)
        ]

    def naive() -> list[list[int]]:
        return [generate_ids(model, tokens[i : i + 1], settings, use_cache=False)[0] for i in range(n)]

    def one_by_one_cached() -> list[list[int]]:
        return [generate_ids(model, tokens[i : i + 1], settings, use_cache=True)[0] for i in range(n)]

    naive_s, naive_ids = timed(naive)
    cached_s, cached_ids = timed(one_by_one_cached)
    batched_s, batched_ids = timed(batched)
    same = naive_ids == batched_ids == cached_ids
    mean_length = sum(map(len, batched_ids)) / n
    print(
        f"\n[generation] {n} world images, greedy, max_length {max_length} (mean caption {mean_length:.1f} tokens), "
        f"{model.config.method} trained {epochs} epochs, {len(set(map(tuple, batched_ids)))} distinct captions"
    )
    print(f"  naive: one image, no cache    {n / naive_s:8.1f} captions/s")
    print(f"  one image, KV cache           {n / cached_s:8.1f} captions/s   {naive_s / cached_s:5.2f}x")
    print(
        f"  batch {batch:3d}, KV cache          {n / batched_s:8.1f} captions/s   {naive_s / batched_s:5.2f}x "
        f"(target >= 5x)"
    )
    print(f"  captions identical: {same}")
    if not same:
        raise SystemExit("batched / cached captions differ from the naive loop's")


def train_step_bench(
    method: str, images: dict[str, Path], examples: list[tuple[str, str]], batch: int, steps: int, work: Path
) -> None:
    results = {}
    for name, root, budget in (("encoder every step", None, 0.0), ("cached encoder tokens", work / "cache", 1e9)):
        model = caption_model(method)
        start = time.perf_counter()
        tokens = EncoderTokens(model, images, root, budget)
        setup = time.perf_counter() - start
        optimizer = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-4, weight_decay=1e-5)
        batches = [examples[(i * batch) % len(examples) :][:batch] for i in range(steps + 1)]

        def step(chosen: list[tuple[str, str]]) -> float:
            ids, mask, labels = pad_batch([caption_token_ids(model.tokenizer, c, 32) for _, c in chosen], model.eos_id)
            loss = model.loss(tokens([sha1 for sha1, _ in chosen]), ids, mask, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()

        model.train()
        step(batches[0])  # warm-up
        start = time.perf_counter()
        for chosen in batches[1:]:
            step(chosen)
        results[name] = ((time.perf_counter() - start) / steps, setup, tokens.cached)
    slow, fast = results["encoder every step"][0], results["cached encoder tokens"][0]
    print(f"\n[training step] {method}, batch {batch}, mean of {steps} steps (loss, backward, AdamW)")
    for name, (seconds, setup, cached) in results.items():
        print(f"  {name:24s} {seconds * 1000:8.1f} ms/step   (set-up {setup:5.2f} s, cached={cached})")
    print(f"  cached / every-step speed-up: {slow / fast:5.2f}x")


MEMORY_CHILD = r"""
import json, os, resource, sys, threading, time, hashlib
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
import _common, torch
from pathlib import Path
from fewclip.caption.encoder_cache import EncoderTokens
from fewclip.caption.train import caption_token_ids, pad_batch
from captioning import caption_model, world_images
torch.set_num_threads(int(sys.argv[6]))
images, examples = world_images(Path(sys.argv[3]), int(sys.argv[7]))
model = caption_model(sys.argv[4])
cached = sys.argv[5] == "cached"
tokens = EncoderTokens(model, images, Path(sys.argv[3]) / "cache" if cached else None, 1e9 if cached else 0)
optimizer = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-4)
chosen = examples[:32]
ids, mask, labels = pad_batch([caption_token_ids(model.tokenizer, c, 32) for _, c in chosen], model.eos_id)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page / 2**20
model.train()
base, peak, done = rss(), [0.0], False
def sample():
    while not done:
        peak[0] = max(peak[0], rss()); time.sleep(0.001)
thread = threading.Thread(target=sample); thread.start()
start = time.perf_counter()
loss = model.loss(tokens([s for s, _ in chosen]), ids, mask, labels)
optimizer.zero_grad(); loss.backward(); optimizer.step()
seconds = time.perf_counter() - start
done = True; thread.join()
print(json.dumps({"base_mb": base, "peak_mb": max(peak[0], rss()), "seconds": seconds,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "trainable": model.trainable_count()}))
"""


def memory_bench(work: Path, threads: int, n_images: int) -> None:
    print("\n[memory] one training step at batch 32 in a fresh process (world CLIP + world decoder, CPU)")
    root = Path(__file__).resolve().parents[1]
    for method, mode in (("adapter", "cached"), ("adapter", "encoder"), ("prefix", "cached"), ("lora", "cached")):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                MEMORY_CHILD,
                str(root / "src"),
                str(root / "bench"),
                str(work),
                method,
                mode,
                str(threads),
                str(n_images),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        n = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"{method}, {'cached tokens' if mode == 'cached' else 'encoder in the step'}"
        print(
            f"  {label:32s} peak RSS {n['peak_mb']:6.0f} MB during the step (loaded: {n['base_mb']:5.0f} MB, "
            f"step adds {n['peak_mb'] - n['base_mb']:4.0f} MB; process peak {n['maxrss_mb']:5.0f} MB)  "
            f"{n['seconds'] * 1000:6.0f} ms  {n['trainable']:,} trainable"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64, help="world caption images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per variant")
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--method", default="adapter", choices=["adapter", "prefix", "lora"])
    parser.add_argument("--train-epochs", type=int, default=4, help="epochs (lr 1e-3) before the generation bench")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only", choices=["generate", "train", "memory"], help="run one part only")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench-caption"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    images, examples = world_images(work, args.images)
    print(f"torch threads {torch.get_num_threads()}; {len(images)} world images, {len(examples)} captions")
    if args.only in (None, "generate"):
        model = caption_model(args.method)
        cache = EncoderTokens(model, images, work / "cache", 1e9)
        if args.train_epochs:  # a model as built says the same caption of every image: train it a little
            train_captioner(model, examples, cache, CaptionTrainConfig(epochs=args.train_epochs, lr=1e-3))
        generation_bench(model, cache(list(images)), args.batch, args.max_length, args.train_epochs)
    if args.only in (None, "train"):
        train_step_bench(args.method, images, examples, args.batch, args.steps, work)
    if args.only in (None, "memory") and not args.skip_memory:
        memory_bench(work, args.threads, args.images)


if __name__ == "__main__":
    main()
