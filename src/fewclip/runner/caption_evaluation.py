"""The evaluate stage of captioning: every (method, seed), the untrained baseline included, on val and test.

Per unit and split: captions decoded with ``decode`` (beam or greedy), CIDEr-D and BLEU-4 against the
references, CLIPScore and RefCLIPScore with ``clipscore_model`` (default: the encoder's own CLIP); one
row in ``caption_summary.csv`` and a predictions CSV. On the test split, word-by-word attention panels
of the highest- and lowest-CLIPScore images and of the first ``attention.fixed_images`` images.
A unit's ``attention.json`` is written last and records the evaluation key (what its numbers depend
on): a unit whose key is unchanged and whose rows and files are there is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fewclip.backbones import load_backbone
from fewclip.backbones.config import ModelConfig
from fewclip.caption.artifacts import load_caption_model
from fewclip.caption.attention import cross_attention_maps, draw_attention_panels, token_words
from fewclip.caption.data import CaptionItem
from fewclip.caption.decode import generate_ids
from fewclip.caption.encoder_cache import EncoderTokens
from fewclip.caption.metrics import clip_scores, image_pixels, text_scores
from fewclip.caption.model import CaptionModel
from fewclip.caption.splits import stored_path
from fewclip.data.images import read_image
from fewclip.fileio import read_csv, read_json, write_csv, write_json
from fewclip.runner.caption_config import BASELINE, CaptionConfig
from fewclip.runner.caption_context import CaptionRun, fit_key, saved_fit_key, unit_model_keys
from fewclip.runner.layout import (
    CAPTION_PREDICTION_COLUMNS,
    CAPTION_SUMMARY_COLUMNS,
    REFERENCE_SEPARATOR,
    CaptionLayout,
)

log = logging.getLogger(__name__)
EVAL_SPLITS = ("val", "test")


class ClipScorer:
    """CLIPScore / RefCLIPScore with one CLIP; image and reference features computed once per split."""

    def __init__(self, model: ModelConfig, cache_dir: Path, batch_size: int) -> None:
        self.backbone = load_backbone(model, cache_dir=cache_dir)
        self.batch_size = batch_size
        self._split_features: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def _features(self, split: str, items: Sequence[CaptionItem]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if split not in self._split_features:
            images = torch.cat(
                [
                    self.backbone.encode_images(
                        image_pixels(self.backbone, [i.path for i in items[s : s + self.batch_size]])
                    )
                    for s in range(0, len(items), self.batch_size)
                ]
            )
            flat = self.backbone.encode_text([ref for item in items for ref in item.captions])
            bounds = np.cumsum([0] + [len(item.captions) for item in items])
            self._split_features[split] = (images, [flat[bounds[i] : bounds[i + 1]] for i in range(len(items))])
        return self._split_features[split]

    def score(self, split: str, items: Sequence[CaptionItem], captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(CLIPScore, RefCLIPScore) per image, each (n,)."""
        images, references = self._features(split, items)
        clip_s, ref_clip_s = clip_scores(images, self.backbone.encode_text(list(captions)), references)
        assert ref_clip_s is not None
        return clip_s.numpy(), ref_clip_s.numpy()


def clipscore_model(config: CaptionConfig) -> ModelConfig:
    """The CLIP that scores: ``clipscore_model``, else the encoder's own CLIP (same revision and device)."""
    if config.clipscore_model is None:
        return config.model.encoder_model().model_copy(update={"precision": "fp32"})
    return ModelConfig(id=config.clipscore_model, device=config.model.device)


def evaluation_key(
    config: CaptionConfig, method: str, seed: int, trained: Any, items: dict[str, Sequence[CaptionItem]]
) -> str:
    """What a unit's numbers depend on; ``trained``: its fit key, or the model weights for the baseline."""
    payload = {
        "model": unit_model_keys(config, method),
        "seed": seed,
        "trained": trained,
        "decode": config.decode.model_dump(mode="json"),
        "clipscore": clipscore_model(config).model_dump(mode="json", exclude={"device"}),
        "attention": config.attention.model_dump(mode="json"),
        "splits": {s: [[i.sha1, list(i.captions)] for i in v] for s, v in items.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def unit_done(layout: CaptionLayout, method: str, seed: int, key: str, rows: list[dict[str, str]]) -> bool:
    record = layout.attention_dir(method, seed) / "attention.json"
    try:
        if not record.is_file() or read_json(record).get("evaluation_key") != key:
            return False
    except (ValueError, OSError):
        return False
    have = {r["split"] for r in rows if r["method"] == method and r["seed"] == str(seed)}
    return have >= set(EVAL_SPLITS) and all(layout.predictions(method, seed, s).is_file() for s in EVAL_SPLITS)


def evaluate_run(run: CaptionRun) -> Path:
    """Evaluate every unit of ``run`` (a ``CaptionRun``) not evaluated under the same key; the summary path."""
    config, layout = run.config, run.layout
    items = {split: run.data.split(split) for split in EVAL_SPLITS}
    rows = read_csv(layout.summary) if layout.summary.is_file() else []
    units = config.units()
    scorer: ClipScorer | None = None
    for method, seed in units:
        trained_key = None
        if method != BASELINE:
            trained_key = saved_fit_key(layout, method, seed)
            if trained_key != fit_key(config, method, seed, run.data, run.model_weights):
                raise FileNotFoundError(
                    f"{method} seed {seed} is not trained with this config "
                    f"({layout.model_dir(method, seed)}); run `fewclip caption train` first"
                )
        key = evaluation_key(config, method, seed, trained_key or run.model_weights, items)
        if unit_done(layout, method, seed, key, rows):
            continue
        if scorer is None:
            scorer = ClipScorer(clipscore_model(config), run.cache_root, config.batch_size)
        model = _unit_model(run, method, seed)
        unit_rows = evaluate_unit(run, model, scorer, method, seed, items, key)
        rows = [r for r in rows if (r["method"], r["seed"]) != (method, str(seed))] + unit_rows
        write_csv(layout.summary, CAPTION_SUMMARY_COLUMNS, _ordered(rows, units))
    on_disk = read_csv(layout.summary) if layout.summary.is_file() else []
    if [[r[c] for c in CAPTION_SUMMARY_COLUMNS] for r in on_disk] != _ordered(rows, units):  # units left the config
        write_csv(layout.summary, CAPTION_SUMMARY_COLUMNS, _ordered(rows, units))
    return layout.summary


def _ordered(rows: list[dict[str, Any]], units: list[tuple[str, int]]) -> list[list[Any]]:
    """Rows of the config's units only (a unit dropped from the config leaves the summary), in unit order."""
    order = {(m, str(s)): i for i, (m, s) in enumerate(units)}
    kept = sorted(
        (r for r in rows if (r["method"], str(r["seed"])) in order),
        key=lambda r: (order[(r["method"], str(r["seed"]))], EVAL_SPLITS.index(r["split"])),
    )
    return [[r[c] for c in CAPTION_SUMMARY_COLUMNS] for r in kept]


def _unit_model(run: CaptionRun, method: str, seed: int) -> CaptionModel:
    if method == BASELINE:
        return run.baseline_model() if seed == run.config.seeds[0] else run.model(method, seed)
    return load_caption_model(
        run.layout.model_dir(method, seed), device=run.config.model.device, attention_layer=run.config.attention.layer
    )


def evaluate_unit(
    run: CaptionRun,
    model: CaptionModel,
    scorer: ClipScorer,
    method: str,
    seed: int,
    items: dict[str, Sequence[CaptionItem]],
    key: str,
) -> list[dict[str, Any]]:
    """Decode and score one unit on every split; write its predictions and attention; its summary rows."""
    config, layout = run.config, run.layout
    manifest = {} if method == BASELINE else read_json(layout.model_dir(method, seed) / "captioner.json")
    rows, test_result = [], None
    for split, split_items in items.items():
        ids = _generate(model, run.tokens(), split_items, config)
        captions = [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
        scores = text_scores(
            {i.image_id: list(i.captions) for i in split_items}, {i.image_id: c for i, c in zip(split_items, captions)}
        )
        clip_s, ref_clip_s = scorer.score(split, split_items, captions)
        write_csv(
            layout.predictions(method, seed, split),
            CAPTION_PREDICTION_COLUMNS,
            [
                (stored_path(i.path, layout.root), c, REFERENCE_SEPARATOR.join(i.captions), f"{s:.6f}")
                for i, c, s in zip(split_items, captions, clip_s)
            ],
        )
        rows.append(
            {
                "method": method,
                "seed": str(seed),
                "split": split,
                "cider": f"{scores.cider:.6f}",
                "clipscore": f"{float(np.mean(clip_s)):.6f}",
                "refclipscore": f"{float(np.mean(ref_clip_s)):.6f}",
                "bleu4": f"{scores.bleu4:.6f}",
                "trainable_params": str(int(manifest.get("trainable_params", 0))),
                "train_seconds": f"{float(manifest.get('train_seconds', 0.0)):.3f}",
                "n_eval": str(len(split_items)),
            }
        )
        if split == "test":
            test_result = (ids, captions, clip_s)
        log.info(
            "evaluate: %s seed %d %s: CIDEr %.3f, CLIPScore %.3f",
            method,
            seed,
            split,
            scores.cider,
            float(np.mean(clip_s)),
        )
    assert test_result is not None
    write_attention(run, model, method, seed, items["test"], *test_result, key=key)
    return rows


def _generate(
    model: CaptionModel, tokens: EncoderTokens, items: Sequence[CaptionItem], config: CaptionConfig
) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(items), config.batch_size):
        batch = items[start : start + config.batch_size]
        ids += generate_ids(model, tokens([item.sha1 for item in batch]), config.decode)
    return ids


def attention_images(clip_s: np.ndarray, fixed: int) -> dict[int, list[str]]:
    """Test image index -> roles: highest and lowest CLIPScore (first on ties), the first ``fixed`` images."""
    roles: dict[int, list[str]] = {}
    if len(clip_s):
        roles.setdefault(int(np.argmax(clip_s)), []).append("highest_clipscore")
        roles.setdefault(int(np.argmin(clip_s)), []).append("lowest_clipscore")
    for index in range(min(fixed, len(clip_s))):
        roles.setdefault(index, []).append("fixed")
    return dict(sorted(roles.items()))


def write_attention(
    run: CaptionRun,
    model: CaptionModel,
    method: str,
    seed: int,
    items: Sequence[CaptionItem],
    ids: list[list[int]],
    captions: list[str],
    clip_s: np.ndarray,
    key: str,
) -> Path:
    """Panels (<image stem>.png) and attention.json (written last: it marks the unit evaluated)."""
    folder = run.layout.attention_dir(method, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    entries, used = [], set()
    for index, roles in attention_images(clip_s, run.config.attention.fixed_images).items():
        item = items[index]
        stem = item.path.stem if item.path.stem not in used else f"{item.path.stem}-{item.image_id}"
        used.add(stem)
        words = token_words(model.tokenizer, ids[index])
        panel = None
        if ids[index]:
            maps = cross_attention_maps(model, run.tokens()([item.sha1]), ids[index], run.config.attention.layer)
            title = f"{method} seed {seed}: {captions[index]} (CLIPScore {clip_s[index]:.3f})"
            panel = draw_attention_panels(read_image(item.path), words, maps, folder / f"{stem}.png", title).name
        entries.append(
            {
                "image": stored_path(item.path, run.layout.root),
                "image_id": item.image_id,
                "roles": roles,
                "caption": captions[index],
                "references": list(item.captions),
                "clipscore": float(clip_s[index]),
                "words": words,
                "panel": panel,
            }
        )
    record = folder / "attention.json"
    write_json(
        record,
        {"evaluation_key": key, "method": method, "seed": seed, "layer": run.config.attention.layer, "images": entries},
    )
    return record
