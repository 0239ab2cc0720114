"""CoOp and CoCoOp training steps vs naive references, ViT-B/32 architecture (default CLIPConfig) with
random weights, 10 classes, in one run.

    python bench/prompt_learning.py [--steps 3] [--skip-memory] [--skip-full-run] [--only cocoop --batches 32]

1. CoOp step (text features for every class, logits for a batch of 32, backward, SGD): ours (prompts
   cut to the longest real prompt, fp32 and bf16) vs a naive reference (77-token sequences, fp32);
   logits compared.
2. CoCoOp step at batch 4 and 32: ours (all image x class prompts batched, fp32 and bf16) vs the
   per-image loop the reference runs (77 tokens, and cut to the longest prompt); logits compared.
3. Peak memory (RSS of a fresh process) of one CoCoOp step at 100 classes, batch 32: with the chunk
   budget (checkpointed chunks) vs one unchunked call.
4. Wall time of a full 16-shot, 10-class CoOp run (the pipeline's training on cached features), fp32
   and bf16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import FOOD_CLASSES, vit_b32_random
from fewclip.backbones import ModelConfig, load_backbone
from fewclip.backbones.prompt_tower import PromptTextTower
from fewclip.heads import CoCoOpConfig, CoCoOpHead, CoOpConfig, CoOpHead, FeatureSet, Task
from fewclip.heads.base import normalize
from fewclip.heads.prompts.cocoop import CoCoOpParams
from fewclip.heads.prompts.coop import ContextParams, CoOpPrompts
from fewclip.heads.prompts.learning import assemble, init_context

CLASSES = FOOD_CLASSES


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def naive_prompts(prompts: CoOpPrompts, tower: PromptTextTower) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference layout: every prompt padded to 77 tokens (the model's full context)."""
    ids = prompts.layout.token_ids
    pad = torch.full((ids.shape[0], tower.max_positions - ids.shape[1]), ids[0, -1].item(), dtype=torch.long)
    with torch.no_grad():
        base = tower.embed_tokens(torch.cat([ids, pad], dim=1))
    return base, prompts.layout.eot_positions


def coop_step_bench(backbone, steps: int) -> None:
    tower = PromptTextTower(backbone.model)
    n_ctx = 16
    ctx = init_context(tower, backbone.tokens, n_ctx, None, len(CLASSES), False, torch.Generator().manual_seed(0))
    images = normalize(torch.randn(32, backbone.dim, generator=torch.Generator().manual_seed(1)))
    labels = torch.arange(32) % len(CLASSES)
    scale = backbone.logit_scale
    results = {}
    for name, precision, naive in (
        ("naive 77 tokens fp32", "fp32", True),
        ("ours fp32", "fp32", False),
        ("ours bf16", "bf16", False),
    ):
        prompts = CoOpPrompts(backbone, CLASSES, n_ctx, "end", precision, "coop")
        params = ContextParams(ctx.clone())
        optimizer = torch.optim.SGD(params.parameters(), lr=0.002, momentum=0.9)
        base, eot = naive_prompts(prompts, tower) if naive else (prompts.base, prompts.layout.eot_positions)
        positions = prompts.layout.ctx_positions

        def logits() -> torch.Tensor:
            if not naive:  # the head's own path: cut to the longest prompt, shared prefix computed once
                return scale * images @ prompts.features(params.ctx).T
            text = tower(assemble(base, params.ctx.expand(len(CLASSES), -1, -1), positions), eot)
            return scale * images @ normalize(text.float()).T

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(logits(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        with torch.no_grad():
            first = logits()
        results[name] = (timed(step, steps), first, prompts.layout.length if not naive else tower.max_positions)
    ref_time, ref_logits, ref_len = results["naive 77 tokens fp32"]
    print("\n[CoOp step] 10 classes, batch 32, n_ctx 16, ViT-B/32 text tower")
    for name, (seconds, logits, length) in results.items():
        diff = (logits - ref_logits).abs().max().item()
        print(
            f"  {name:22s} seq {length:2d} (shared prefix {prompts.layout.shared_prefix if 'ours' in name else 0:2d})  {seconds * 1000:8.1f} ms/step  speed-up {ref_time / seconds:5.2f}x  "
            f"max |logit diff| vs naive {diff:.2e}"
        )


def cocoop_step_bench(backbone, steps: int, batches: list[int]) -> None:
    print(
        "\n[CoCoOp step] 10 classes, n_ctx 4 ('a photo of a'): the reference's per-image loop vs ours batched "
        "(one training step: logits, loss, backward)"
    )
    tower = PromptTextTower(backbone.model)
    n_ctx = 4  # "a photo of a": one vector per word
    ctx = init_context(tower, backbone.tokens, n_ctx, "a photo of a", len(CLASSES), False, torch.Generator())
    prompts = {p: CoOpPrompts(backbone, CLASSES, n_ctx, "end", p, "cocoop") for p in ("fp32", "bf16")}
    base77, eot = naive_prompts(prompts["fp32"], tower)
    positions = prompts["fp32"].layout.ctx_positions
    scale = backbone.logit_scale
    for batch in batches:
        images = torch.randn(batch, backbone.dim, generator=torch.Generator().manual_seed(batch))
        labels = torch.arange(batch) % len(CLASSES)
        torch.manual_seed(0)
        params = CoCoOpParams(ctx.clone(), backbone.dim)
        head = CoCoOpHead(CoCoOpConfig())

        def loop_logits(base: torch.Tensor) -> torch.Tensor:
            """The reference algorithm: per image, its C prompts through the text tower."""
            rows = []
            for image in normalize(images):
                shifted = params.ctx + params.meta_net(image)[None]  # (n_ctx, w)
                full = assemble(base, shifted.expand(len(CLASSES), -1, -1), positions)
                rows.append(scale * image @ normalize(tower(full, eot)).T)
            return torch.stack(rows)

        def batched_logits(precision: str) -> torch.Tensor:
            return head._conditional_logits(params, prompts[precision], images, scale)

        def step(fn) -> None:
            loss = torch.nn.functional.cross_entropy(fn(), labels)
            params.zero_grad()
            loss.backward()  # no optimizer step: every variant times the same parameters

        with torch.no_grad():
            reference = loop_logits(base77)
            diff = (reference - batched_logits("fp32")).abs().max().item()
            diff_bf16 = (reference - batched_logits("bf16")).abs().max().item()
        loop77_s = timed(lambda: step(lambda: loop_logits(base77)), steps)
        loop_s = timed(lambda: step(lambda: loop_logits(prompts["fp32"].base)), steps)
        ours_s = timed(lambda: step(lambda: batched_logits("fp32")), steps)
        bf16_s = timed(lambda: step(lambda: batched_logits("bf16")), steps)
        print(
            f"  batch {batch:2d}: per-image loop 77 tokens {loop77_s * 1000:8.1f} ms | per-image loop cut {loop_s * 1000:8.1f} ms"
            f" | ours fp32 {ours_s * 1000:8.1f} ms | ours bf16 {bf16_s * 1000:8.1f} ms"
        )
        print(
            f"            speed-up vs reference: fp32 {loop77_s / ours_s:5.2f}x, bf16 {loop77_s / bf16_s:5.2f}x"
            f"   (vs cut loop: fp32 {loop_s / ours_s:4.2f}x, bf16 {loop_s / bf16_s:4.2f}x)"
            f"   max |logit diff| fp32 {diff:.2e}, bf16 {diff_bf16:.2e}"
        )


MEMORY_CHILD = r"""
import json, os, sys, threading, time, torch
sys.path.insert(0, sys.argv[1])
from fewclip.backbones import ModelConfig, load_backbone
from fewclip.heads import CoCoOpConfig, CoCoOpHead
from fewclip.heads.prompts.cocoop import CoCoOpParams
from fewclip.heads.prompts.coop import CoOpPrompts
from fewclip.heads.prompts.learning import init_context
from fewclip.backbones.prompt_tower import PromptTextTower
backbone = load_backbone(ModelConfig(id=sys.argv[2], device="cpu"))
names = [f"class number {i}" for i in range(100)]
tower = PromptTextTower(backbone.model)
n_ctx = 4  # "a photo of a": one vector per word
ctx = init_context(tower, backbone.tokens, n_ctx, "a photo of a", 100, False, torch.Generator())
prompts = CoOpPrompts(backbone, names, n_ctx, "end", "fp32", "cocoop")
params = CoCoOpParams(ctx, backbone.dim)
head = CoCoOpHead(CoCoOpConfig(max_prompts_per_call=int(sys.argv[3])))
images = torch.randn(32, backbone.dim)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page / 2**20
base, peak, done = rss(), [0.0], False
def sample():
    while not done:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
thread = threading.Thread(target=sample); thread.start()
start = time.perf_counter()
loss = torch.nn.functional.cross_entropy(head._conditional_logits(params, prompts, images, backbone.logit_scale), torch.arange(32) % 100)
loss.backward()
seconds = time.perf_counter() - start
done = True; thread.join()
print(json.dumps({"base_mb": base, "peak_mb": peak[0], "seconds": seconds}))
"""


def memory_bench(model_dir: Path) -> None:
    print(
        "\n[CoCoOp memory] one training step, 100 classes, batch 32 (3,200 prompts), peak RSS sampled during the step"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    for budget in (256, 1024, 100000):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, src, str(model_dir), str(budget)],
            capture_output=True,
            text=True,
            check=True,
        )
        numbers = json.loads(out.stdout.strip().splitlines()[-1])
        label = "unchunked" if budget >= 3200 else f"max_prompts_per_call={budget}"
        print(
            f"  {label:28s} step adds {numbers['peak_mb'] - numbers['base_mb']:7.0f} MB over the loaded model "
            f"({numbers['base_mb']:.0f} MB)   {numbers['seconds']:.1f} s"
        )


def full_run_bench(backbone) -> None:
    print("\n[CoOp full run] 16 shots x 10 classes on cached features, 4 val/class, 50 epochs, batch 32")
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(len(CLASSES), backbone.dim, generator=generator)

    def features(n: int) -> FeatureSet:
        labels = torch.arange(n * len(CLASSES)) % len(CLASSES)
        return FeatureSet(centers[labels] + 0.5 * torch.randn(len(labels), backbone.dim, generator=generator), labels)

    train, val = features(16), features(4)
    for precision in ("fp32", "bf16"):
        head = CoOpHead(CoOpConfig(precision=precision, epochs=50))
        start = time.perf_counter()
        head.fit(Task(CLASSES, backbone=backbone, seed=1, shots=16), train, val)
        print(
            f"  {precision}: {time.perf_counter() - start:7.1f} s  (final train loss {head.history_[-1]['train_loss']:.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-full-run", action="store_true")
    parser.add_argument("--only", choices=["coop", "cocoop", "memory", "full-run"], help="run one part only")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's); 1 holds up under contention"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 32], help="CoCoOp step batch sizes")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fewclip-bench"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = vit_b32_random(Path(args.work) / "vit-b32-random")
    backbone = load_backbone(ModelConfig(id=str(model_dir), device="cpu"))
    print(f"torch threads {torch.get_num_threads()}")

    def wanted(part: str) -> bool:
        return args.only in (None, part)

    if wanted("coop"):
        coop_step_bench(backbone, args.steps)
    if wanted("cocoop"):
        cocoop_step_bench(backbone, args.steps, args.batches)
    if wanted("memory") and not args.skip_memory:
        memory_bench(model_dir)
    if wanted("full-run") and not args.skip_full_run:
        full_run_bench(backbone)


if __name__ == "__main__":
    main()
