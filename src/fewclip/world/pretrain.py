"""Contrastive pretraining of a tiny CLIP on the world (``fewclip world pretrain``).

Symmetric InfoNCE with a learnable logit scale; captions from several templates that also mention
size and position (fewer identical captions in a batch); a fixed set of held-out colour-shape
combinations never shown. Every image is rendered up front on all cores; warm-up + cosine are driven
by elapsed time over a time budget, so a run ends on time on any machine; bf16 autocast on CPU.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fewclip.backbones.preprocess import OPENAI_MEAN as MEAN, OPENAI_STD as STD, write_processor_config
from fewclip.world import CLASSES, HELD_OUT
from fewclip.world.captions import fill_all
from fewclip.world.card import write_model_card
from fewclip.world.render import COLOURS, POSITIONS, SHAPES, SIZES, Scene, image_rng, render
from fewclip.world.tokenizer import train_bpe, write_clip_tokenizer

CAPTION_TEMPLATES = (
    "a photo of a {colour} {shape}.",
    "a {size} {colour} {shape}.",
    "a {colour} {shape} in the {position}.",
    "a {size} {colour} {shape} in the {position}.",
    "a {shape} that is {colour}.",
    "the {colour} {shape}.",
    "a picture of a {size} {shape}, {colour}.",
    "a {colour} {shape} on a background.",
)


@dataclass
class PretrainConfig:
    minutes: float = 12.0  # time budget for the optimisation (rendering and evaluation come on top)
    steps: int | None = None  # a fixed step budget instead: the schedule runs over steps, bit-reproducible
    seed: int = 0
    images_per_class: int = 400  # rendered up front, per seen class
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    heads: int = 4
    max_positions: int = 32
    vocab_merges: int = 124
    precision: str = "bf16"
    workers: int = 2
    eval_per_class: int = 20
    held_out: list[str] = field(default_factory=lambda: list(HELD_OUT))


def caption(scene: Scene, rng: np.random.Generator) -> str:
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(colour=scene.colour, shape=scene.shape, size=scene.size, position=scene.position)


def caption_corpus() -> list[str]:
    """Every caption the templates can produce, for training the tokenizer."""
    return fill_all(CAPTION_TEMPLATES, colour=COLOURS, shape=SHAPES, size=SIZES, position=POSITIONS)


def _render_chunk(args: tuple[list[str], int, int, int, str, str]) -> tuple[np.ndarray, list[Scene]]:
    names, start, count, size, domain, split = args
    images, scenes = [], []
    for name in names:
        for index in range(start, start + count):
            image, scene = render(name, image_rng(_SEED[0], domain, split, name, index), size, domain)
            images.append(np.asarray(image))
            scenes.append(scene)
    return np.stack(images), scenes


_SEED = [0]


def _init_worker(seed: int) -> None:
    _SEED[0] = seed


def render_set(
    names: Sequence[str],
    per_class: int,
    size: int,
    seed: int,
    workers: int,
    split: str = "pretrain",
    domain: str = "photo",
) -> tuple[np.ndarray, list[Scene], np.ndarray]:
    """(images (n, H, W, 3) uint8, scenes, labels) rendered on ``workers`` processes."""
    chunks = [([name], 0, per_class, size, domain, split) for name in names]
    _init_worker(seed)
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(seed,)) as pool:
            parts = list(pool.map(_render_chunk, chunks))
    else:
        parts = [_render_chunk(c) for c in chunks]
    images = np.concatenate([p[0] for p in parts])
    scenes = [s for p in parts for s in p[1]]
    labels = np.repeat(np.arange(len(names)), per_class)
    return images, scenes, labels


def to_pixels(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255)
    x = (x - torch.tensor(MEAN)) / torch.tensor(STD)
    return x.permute(0, 3, 1, 2).contiguous()


def build_model(cfg: PretrainConfig, vocab_size: int) -> Any:
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.width * 4,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = dict(
        hidden_size=cfg.width,
        intermediate_size=cfg.width * 4,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    torch.manual_seed(cfg.seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.width))


def lr_at(elapsed: float, budget: float, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up then cosine to zero, as functions of progress (elapsed time or steps) over the budget."""
    progress = min(elapsed / budget, 1.0)
    if progress < warmup_fraction:
        return peak * progress / warmup_fraction
    return 0.5 * peak * (1 + math.cos(math.pi * (progress - warmup_fraction) / (1 - warmup_fraction)))


def contrastive_loss(model: Any, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    image = model.get_image_features(pixel_values=pixels).pooler_output
    text = model.get_text_features(**tokens).pooler_output
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp().clamp(max=100) * image.float() @ text.float().T
    target = torch.arange(len(logits))
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def zero_shot_accuracy(
    model: Any,
    tokenizer: Any,
    names: Sequence[str],
    images: np.ndarray,
    labels: np.ndarray,
    templates: Sequence[str] = ("a photo of a {}.",),
) -> float:
    model.eval()
    prompts = [t.format(n) for t in templates for n in names]
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    text = model.get_text_features(**tokens).pooler_output
    text = (text / text.norm(dim=-1, keepdim=True)).reshape(len(templates), len(names), -1).mean(0)
    correct = 0
    for start in range(0, len(images), 512):
        image = model.get_image_features(pixel_values=to_pixels(images[start : start + 512])).pooler_output
        correct += int(((image @ text.T).argmax(-1).numpy() == labels[start : start + 512]).sum())
    return correct / len(images)


def start_pretraining(seed: int, out: Path) -> tuple[float, np.random.Generator]:
    """Where a pretraining starts: the clock, torch seeded, a numpy generator of the seed, the output folder."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    return started, np.random.default_rng(seed)


def adamw(
    model: torch.nn.Module, decays: Callable[[str], bool], lr: float, weight_decay: float, eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.98) with ``weight_decay`` on the matrices whose name ``decays`` accepts, none on the rest."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and decays(n)]
    other = [p for n, p in named if not (p.ndim >= 2 and decays(n))]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=eps)


def progress_row(step: int, seconds: float, loss: float, lr: float, model: Any) -> dict[str, float]:
    """One row of the pretraining's history."""
    scale = float(model.logit_scale.detach().exp())
    return {"step": step, "seconds": round(seconds, 1), "loss": loss, "lr": lr, "logit_scale": scale}


def pretrain(
    cfg: PretrainConfig, out: Path, log: Callable[[str], None] = print, command: str | None = None
) -> dict[str, Any]:
    """Train and save a tiny CLIP in Hugging Face format; returns the measured numbers."""
    from transformers import CLIPTokenizer

    started, rng = start_pretraining(cfg.seed, out)
    merges = train_bpe(caption_corpus(), cfg.vocab_merges)
    vocab_size = write_clip_tokenizer(out, merges, cfg.max_positions)
    tokenizer = CLIPTokenizer.from_pretrained(str(out))
    seen = [name for name in CLASSES if name not in cfg.held_out]
    images, scenes, _ = render_set(seen, cfg.images_per_class, cfg.image_size, cfg.seed, cfg.workers)
    log(
        f"rendered {len(images)} images of {len(seen)} seen classes in {time.perf_counter() - started:.0f}s; "
        f"vocabulary {vocab_size} tokens"
    )
    model = build_model(cfg, vocab_size)
    model.train()
    optimizer = adamw(model, lambda name: "embedding" not in name, cfg.lr, cfg.weight_decay, eps=1e-6)
    budget = cfg.minutes * 60
    history: list[dict[str, float]] = []
    step, pairs, train_start = 0, 0, time.perf_counter()
    while True:
        elapsed = time.perf_counter() - train_start
        if cfg.steps is not None:
            if step >= cfg.steps:
                break
            lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_fraction)
        else:
            if elapsed >= budget:
                break
            lr = lr_at(elapsed, budget, cfg.lr, cfg.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = rng.choice(len(images), size=cfg.batch_size, replace=False)
        tokens = tokenizer([caption(scenes[i], rng) for i in index], padding=True, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = contrastive_loss(model, to_pixels(images[index]), tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step, pairs = step + 1, pairs + cfg.batch_size
        if step % 20 == 0 or step == 1:
            done = time.perf_counter() - train_start  # after this step: `elapsed` was read before it (~0 at step 1)
            history.append(progress_row(step, done, float(loss.detach()), lr, model))
            log(
                f"step {step:5d}  {done:6.0f}s  loss {float(loss.detach()):.3f}  lr {lr:.2e}  "
                f"scale {float(model.logit_scale.detach().exp()):.1f}  {pairs / done:.0f} pairs/s"
            )
    train_seconds = time.perf_counter() - train_start
    if history and history[-1]["step"] != step:  # the last step too: final_loss is the loss it ended at
        history.append(progress_row(step, train_seconds, float(loss.detach()), lr, model))
    results = evaluate(model, tokenizer, cfg)
    results.update(
        steps=step,
        pairs=pairs,
        train_seconds=round(train_seconds, 1),
        pairs_per_second=round(pairs / train_seconds, 1),
        final_loss=history[-1]["loss"] if history else None,
        first_loss=history[0]["loss"] if history else None,
    )
    save(model, out, cfg, results, history)
    write_model_card(out, command or f"fewclip world pretrain --out {out} --minutes {cfg.minutes} --seed {cfg.seed}")
    log(json.dumps(results))
    return results


def evaluate(model: Any, tokenizer: Any, cfg: PretrainConfig) -> dict[str, Any]:
    """Zero-shot accuracy on fresh images (the test split's renders, never used in pretraining)."""

    def accuracy(names: Sequence[str], domain: str = "photo") -> float:
        images, _, labels = render_set(names, cfg.eval_per_class, cfg.image_size, cfg.seed, cfg.workers, "test", domain)
        return round(zero_shot_accuracy(model, tokenizer, names, images, labels), 4)

    seen10 = [name for name in CLASSES if name not in cfg.held_out][::5][:10]
    return {
        "zero_shot_seen_10way": accuracy(seen10),
        "zero_shot_held_out_12way": accuracy(cfg.held_out),
        "zero_shot_all_64way": accuracy(CLASSES),
        "zero_shot_all_64way_sketch": accuracy(CLASSES, "sketch"),
        "zero_shot_all_64way_texture": accuracy(CLASSES, "texture"),
        "seen_10": seen10,
    }


def save(model: Any, out: Path, cfg: PretrainConfig, results: dict[str, Any], history: list[dict[str, float]]) -> None:
    model.eval()
    model.half().save_pretrained(str(out))  # fp16 safetensors; fewclip loads it back in fp32
    write_processor_config(out, cfg.image_size)
    (out / "pretraining.json").write_text(
        json.dumps({"config": asdict(cfg), "results": results, "history": history}, indent=1) + "\n"
    )
