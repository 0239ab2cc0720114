"""Feature extraction (read + decode + preprocess + forward, through the real stage) vs the bare
forward on pre-made tensors, same batch size, same run, ViT-B/32 architecture with random weights.

    python bench/feature_extraction.py [--images 256] [--batch 32] [--precision fp32]

Target: extraction throughput >= 0.9 x bare forward throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import photo_folder, vit_b32_random
from fewclip.backbones import ModelConfig, load_backbone
from fewclip.data.images import read_image
from fewclip.data.records import Record
from fewclip.features import FeatureCache, extract_features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2, help="loader threads")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"))
    args = parser.parse_args()
    work = Path(args.work)
    model_dir = vit_b32_random(work / "vit-b32-random")
    data = photo_folder(work / f"photos-{args.images}", classes=1, per_class=args.images)
    paths = sorted((data / "train" / "class_0").glob("*.jpg"))[: args.images]
    records = [
        Record(str(p), 0, "c", hashlib.sha1(p.read_bytes()).hexdigest()) for p in paths
    ]  # as prepare records them

    backbone = load_backbone(ModelConfig(id=str(model_dir), precision=args.precision, device="cpu"))
    pixels = torch.from_numpy(np.stack([backbone.transform(read_image(p)) for p in paths]))
    backbone.encode_images(pixels[: args.batch])  # warm-up

    def bare() -> float:
        start = time.perf_counter()
        for i in range(0, len(pixels), args.batch):
            backbone.encode_images(pixels[i : i + args.batch])
        return time.perf_counter() - start

    def full() -> float:
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = FeatureCache(Path(cache_dir), backbone.fingerprint())
            start = time.perf_counter()
            extract_features(
                records, data, backbone, cache, batch_size=args.batch, threads=args.threads, progress=False
            )
            return time.perf_counter() - start

    # Alternate to spread any drift in machine speed over both measurements.
    bare_times, full_times = [], []
    for _ in range(2):
        bare_times.append(bare())
        full_times.append(full())
    bare_s, full_s = min(bare_times), min(full_times)
    n = len(paths)
    print(
        f"images={n} batch={args.batch} precision={args.precision} torch_threads={torch.get_num_threads()} loader_threads={args.threads}"
    )
    print(f"bare forward on pre-made tensors : {bare_s:7.2f} s  {n / bare_s:6.1f} img/s")
    print(f"extraction (read+decode+prep+fwd): {full_s:7.2f} s  {n / full_s:6.1f} img/s")
    print(f"ratio extraction / bare throughput: {bare_s / full_s:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
