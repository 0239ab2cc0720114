"""OpenCLIP RN50 (random weights, nothing downloaded) through fewclip vs OpenCLIP itself, in one run.
Needs the OpenCLIP environment (`bash setup.sh --open-clip`):

    .venv-open-clip/bin/python bench/open_clip_rn50.py [--images 128] [--batch 32] [--steps 3]

1. Feature extraction throughput: fewclip's features stage (read + decode + preprocess in PIL + forward,
   loader threads ahead of the encoder) vs OpenCLIP's bare ``encode_image`` on the same batches already
   preprocessed by OpenCLIP's own torchvision transform. Target >= 0.9.
2. CoOp training step on the OpenCLIP text tower (10 classes, n_ctx 16, batch 32 image features, backward,
   SGD): fewclip's prompts (cut to the longest real prompt, shared prefix once) vs the naive reference
   (every prompt padded to 77 tokens, OpenCLIP's own transformer and mask); logits compared. Target >= 4x.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from _common import photo_folder
from fewclip.backbones import ModelConfig, load_backbone
from fewclip.data.images import read_image
from fewclip.data.records import Record
from fewclip.features import FeatureCache, extract_features
from fewclip.heads.base import normalize
from fewclip.heads.prompts.coop import ContextParams, CoOpPrompts
from fewclip.heads.prompts.learning import assemble, init_context

CLASSES = [
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
]


def rn50_random(folder: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    path = folder / "RN50-random.safetensors"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = open_clip.create_model("RN50", pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def extraction_bench(backbone, work: Path, n_images: int, batch: int, threads: int) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    data = photo_folder(work / f"photos-{n_images}", classes=1, per_class=n_images)
    paths = sorted((data / "train" / "class_0").glob("*.jpg"))[:n_images]
    records = [
        Record(str(p), 0, "c", hashlib.sha1(p.read_bytes()).hexdigest()) for p in paths
    ]  # as prepare records them
    reference = image_transform_v2(PreprocessCfg(**backbone.model.visual.preprocess_cfg), is_train=False)
    pixels = torch.stack([reference(read_image(p)) for p in paths])  # OpenCLIP's own preprocessing
    model = backbone.model

    def bare() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(pixels), batch):
                model.encode_image(pixels[i : i + batch])
        return time.perf_counter() - start

    def full() -> float:
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = FeatureCache(Path(cache_dir), backbone.fingerprint())
            start = time.perf_counter()
            extract_features(records, data, backbone, cache, batch_size=batch, threads=threads, progress=False)
            return time.perf_counter() - start

    bare()  # warm-up
    bare_times, full_times = [], []
    for _ in range(2):  # alternate, to spread drift in machine speed over both
        bare_times.append(bare())
        full_times.append(full())
    bare_s, full_s = min(bare_times), min(full_times)
    print(
        f"\n[features] RN50, {len(paths)} JPEGs 512x384, batch {batch}, torch threads {torch.get_num_threads()}, "
        f"loader threads {threads}"
    )
    print(f"  OpenCLIP encode_image on pre-made tensors : {bare_s:7.2f} s  {len(paths) / bare_s:6.1f} img/s")
    print(f"  fewclip features stage (read..forward)    : {full_s:7.2f} s  {len(paths) / full_s:6.1f} img/s")
    print(f"  ratio fewclip / OpenCLIP throughput: {bare_s / full_s:.3f}  (target >= 0.9)")


def coop_step_bench(backbone, steps: int) -> None:
    tower = backbone.prompt_tower()
    n_ctx = 16
    ctx = init_context(tower, backbone.tokens, n_ctx, None, len(CLASSES), False, torch.Generator().manual_seed(0))
    images = normalize(torch.randn(32, backbone.dim, generator=torch.Generator().manual_seed(1)))
    labels = torch.arange(32) % len(CLASSES)
    scale = backbone.logit_scale
    results = {}
    for name, naive in (("naive 77 tokens", True), ("fewclip", False)):
        prompts = CoOpPrompts(backbone, CLASSES, n_ctx, "end", "fp32", "coop")
        params = ContextParams(ctx.clone())
        optimizer = torch.optim.SGD(params.parameters(), lr=0.002, momentum=0.9)
        ids = prompts.layout.token_ids
        if naive:  # the reference: 77-token sequences, OpenCLIP's transformer with its full 77x77 causal mask
            pad = torch.zeros(ids.shape[0], tower.max_positions - ids.shape[1], dtype=torch.long)
            with torch.no_grad():
                base = tower.embed_tokens(torch.cat([ids, pad], dim=1))
        positions, eot = prompts.layout.ctx_positions, prompts.layout.eot_positions

        def reference_text(embeds: torch.Tensor) -> torch.Tensor:
            x = embeds + backbone.model.positional_embedding
            x = backbone.model.transformer(x, attn_mask=backbone.model.attn_mask)
            x = backbone.model.ln_final(x)[torch.arange(len(x)), eot]
            return x @ backbone.model.text_projection

        def logits() -> torch.Tensor:
            if not naive:
                return scale * images @ prompts.features(params.ctx).T
            text = reference_text(assemble(base, params.ctx.expand(len(CLASSES), -1, -1), positions))
            return scale * images @ normalize(text.float()).T

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(logits(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        with torch.no_grad():
            first = logits()
        results[name] = (timed(step, steps), first, tower.max_positions if naive else prompts.layout.length)
    ref_time, ref_logits, _ = results["naive 77 tokens"]
    print("\n[CoOp step] RN50 text tower (OpenCLIP), 10 classes, n_ctx 16, batch 32")
    for name, (seconds, out, length) in results.items():
        diff = (out - ref_logits).abs().max().item()
        print(
            f"  {name:16s} seq {length:2d}  {seconds * 1000:8.1f} ms/step  speed-up {ref_time / seconds:5.2f}x  "
            f"max |logit diff| vs naive {diff:.2e}"
        )
    print("  target: >= 4x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="loader threads")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", choices=["features", "coop"])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"))
    args = parser.parse_args()
    work = Path(args.work)
    weights = rn50_random(work / "rn50")
    backbone = load_backbone(ModelConfig(library="open_clip", id="RN50", pretrained=str(weights), device="cpu"))
    if args.only in (None, "features"):
        extraction_bench(backbone, work, args.images, args.batch, args.threads)
    if args.only in (None, "coop"):
        coop_step_bench(backbone, args.steps)


if __name__ == "__main__":
    main()
