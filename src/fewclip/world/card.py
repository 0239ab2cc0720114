"""The model cards (README.md) of the world's pretrained models, written from their ``pretraining.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewclip.fileio import read_json


def pretraining_record(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config and the measured results a pretraining wrote to ``folder/pretraining.json``."""
    record = read_json(folder / "pretraining.json")
    return record["config"], record["results"]


def write_card(folder: Path, lines: list[str]) -> Path:
    """``folder/README.md`` holding ``lines``."""
    card = folder / "README.md"
    card.write_text("\n".join(lines))
    return card


def write_model_card(folder: Path, command: str) -> Path:
    """The world CLIP's card."""
    cfg, results = pretraining_record(folder)
    n_params = None
    weights = folder / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            n_params = sum(_numel(handle.get_slice(k).get_shape()) for k in handle.keys())
    lines = [
        "# fewclip world CLIP",
        "",
        "A tiny CLIP (`CLIPModel`, Hugging Face format) pretrained contrastively on fewclip's procedural world",
        "of coloured shapes (8 shapes x 8 colours = 64 classes). It ships inside the package so that",
        "`fewclip run` and the tests of every method have a CLIP that understands its images and prompts",
        "with no network. It is not a general-purpose model.",
        "",
        "## How it was made",
        "",
        f"    {command}",
        "",
        f"- Architecture: vision {cfg['image_size']} px, patch {cfg['patch_size']}, width {cfg['width']}, "
        f"{cfg['layers']} layers, {cfg['heads']} heads; text width {cfg['width']}, {cfg['layers']} layers, "
        f"{cfg['max_positions']} positions; projection {cfg['width']}"
        + (f"; {n_params:,} parameters, stored in fp16." if n_params else "."),
        "- Tokenizer: CLIP-format BPE (vocab.json + merges.txt) trained on every caption the templates produce "
        f"({cfg['vocab_merges']} merges at most): 256 byte symbols, the same with `</w>`, merges, then "
        "`<|startoftext|>` and `<|endoftext|>`.",
        f"- Data: {cfg['images_per_class']} rendered 'photo'-domain images per seen class (seed {cfg['seed']}), "
        "captions drawn per step from templates that name colour, shape, size and position.",
        f"- Objective: symmetric InfoNCE with a learnable logit scale; AdamW lr {cfg['lr']}, weight decay "
        f"{cfg['weight_decay']}, batch {cfg['batch_size']}, linear warm-up then cosine over "
        + (f"{cfg['steps']} steps" if cfg.get("steps") else f"a {cfg['minutes']}-minute budget")
        + f", {cfg['precision']} autocast on 2 CPU cores: {results['steps']} steps, "
        f"{results['pairs']:,} pairs ({results['pairs_per_second']} pairs/s); loss {results['first_loss']:.3f} -> "
        f"{results['final_loss']:.3f}.",
        "- A time budget makes the number of steps depend on the machine (and on its load); `--steps "
        f"{results['steps']}` instead gives a run of the same length whose schedule is a function of the "
        "step, reproducible anywhere.",
        "",
        "## Held-out colour-shape combinations (never shown in pretraining)",
        "",
        ", ".join(cfg["held_out"]),
        "",
        "## Measured zero-shot accuracy (fresh test-split renders, template 'a photo of a {}.')",
        "",
        "| evaluation | accuracy |",
        "|---|---|",
        f"| 10 seen classes ({', '.join(results['seen_10'])}), 10-way | {results['zero_shot_seen_10way']:.3f} |",
        f"| the 12 held-out combinations, 12-way | {results['zero_shot_held_out_12way']:.3f} |",
        f"| all 64 classes, 64-way | {results['zero_shot_all_64way']:.3f} |",
        f"| all 64 classes, 'sketch' domain | {results['zero_shot_all_64way_sketch']:.3f} |",
        f"| all 64 classes, 'texture' domain | {results['zero_shot_all_64way_texture']:.3f} |",
        "",
    ]
    return write_card(folder, lines)


def _numel(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total
