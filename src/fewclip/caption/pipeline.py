"""The captioning stages, each a plain function that reads what the last one wrote (``CaptionLayout``):

prepare  -> data/{train,val,test}.json (COCO format, each image with its sha1), data/skipped.csv
encode   -> frozen encoder tokens of every split's images in the shared cache (when within the budget)
train    -> models/<method>/seed_S/captioner.{safetensors,json}, results/history/<method>/seed_S.csv
evaluate -> results/caption_summary.csv, results/predictions/..., results/attention/... (``caption.evaluation``)
report   -> report.html (``fewclip.caption.report``)

Every stage skips what is done: prepare when the split files were written from the same data, train a
(method, seed) whose saved captioner has the same fit key, evaluate a unit whose attention.json has the
same evaluation key. A killed training resumes from its checkpoint (``caption.train``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from fewclip.fileio import remove_stale_temporaries, write_csv, write_json
from fewclip.interrupt import Progress
from fewclip.caption.data import CaptionData, CaptionItem, load_caption_data
from fewclip.caption.decode import DecodeConfig, caption_tokens
from fewclip.caption.metrics import text_scores
from fewclip.caption.run_context import CaptionRun, fit_key, saved_fit_key
from fewclip.caption.splits import SPLITS, prepare_key, prepared_with, split_json

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"  # beside the captioner in its model_dir while it trains


# --- prepare -------------------------------------------------------------------------------------


def prepare(run: CaptionRun) -> CaptionData:
    """Load and split the captions; write the split files and the skipped images (kept if already there)."""
    layout, key = run.layout, prepare_key(run.config)
    run.write_config()
    if prepared_with(layout, key):
        log.info("prepare: %s already holds these splits", layout.data)
        return run.data
    data = load_caption_data(run.config.data, layout.data)  # bad input fails here, before any file changes
    for split in SPLITS:  # a half-written set of split files must not pass for a prepared one
        layout.split_file(split).unlink(missing_ok=True)
    write_csv(layout.skipped, ("image", "reason"), [(s.where, s.reason) for s in data.skipped])
    for split in SPLITS:
        write_json(layout.split_file(split), split_json(data.split(split), split, key, layout.root))
    if data.skipped:
        log.warning("prepare: %d unreadable image(s) skipped, listed in %s", len(data.skipped), layout.skipped)
    log.info("prepare: %d train, %d val, %d test images", len(data.train), len(data.val), len(data.test))
    run._data = None  # read back from the split files: every stage sees the same paths
    return run.data


# --- encode --------------------------------------------------------------------------------------


def encode(run: CaptionRun) -> bool:
    """Encode every split's images into the cache (when they fit the budget); True if cached."""
    run.write_config()
    tokens = run.tokens()
    if not tokens.cached:
        log.info("encode: the encoder tokens exceed training.cache_budget_mb=%g; they are computed on the fly",
                 run.config.training.cache_budget_mb)
    return bool(tokens.cached)


# --- train ---------------------------------------------------------------------------------------


def decode_split(model: Any, tokens: Callable[[Sequence[str]], Any], items: Sequence[CaptionItem],
                 settings: DecodeConfig, batch_size: int) -> list[str]:
    """Captions of ``items`` in order, decoded in batches."""
    captions: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        captions += caption_tokens(model, tokens([item.sha1 for item in batch]), settings)
    return captions


def split_cider(model: Any, tokens: Any, items: Sequence[CaptionItem], settings: DecodeConfig, batch_size: int) -> float:
    captions = decode_split(model, tokens, items, settings, batch_size)
    references = {item.image_id: list(item.captions) for item in items}
    return text_scores(references, {item.image_id: c for item, c in zip(items, captions)}).cider


def train(run: CaptionRun, on_epoch: Callable[[str, int, dict[str, float]], None] | None = None) -> list[str]:
    """Train every (method, seed) not trained with these inputs; returns the units trained now."""
    from fewclip.caption.artifacts import save_caption_model
    from fewclip.caption.train import train_captioner

    run.write_config()
    config, layout = run.config, run.layout
    pending = [(m, s) for m in config.methods for s in config.seeds
               if saved_fit_key(layout, m, s) != fit_key(config, m, s, run.data, run.model_weights)]
    if not pending:
        return []
    tokens = run.tokens()
    units = len(config.methods) * len(config.seeds)
    progress = run.progress = Progress(units, "units trained", done=units - len(pending))
    data = run.data
    examples = [(item.sha1, caption) for item in data.train for caption in item.captions]
    greedy = DecodeConfig(beam_size=1, max_length=config.decode.max_length)  # selection decodes greedily
    trained = []
    for method, seed in pending:
        folder = layout.model_dir(method, seed)
        if folder.is_dir():
            remove_stale_temporaries(folder)  # left by a killed save; a live writer's are kept
        model = run.model(method, seed)
        val_score = (lambda m: split_cider(m, tokens, data.val, greedy, config.batch_size)) if data.val else None
        epoch_hook = (lambda row, m=method, s=seed: on_epoch(m, s, row)) if on_epoch else None
        log.info("train: %s seed %d (%d trainable parameters, %d captions)", method, seed, model.trainable_count(),
                 len(examples))
        done = train_captioner(model, examples, tokens, config.training, seed=seed, val_score=val_score,
                               checkpoint=folder / CHECKPOINT, on_epoch=epoch_hook, progress=config.output.progress)
        columns = ("epoch", "train_loss", "lr", "val_cider", "seconds")
        write_csv(layout.history(method, seed), columns, ([row.get(c, "") for c in columns] for row in done.history))
        key = fit_key(config, method, seed, data, run.model_weights)
        save_caption_model(model, folder, {"fit_key": key, "method": method, "seed": seed, "train_seconds": done.seconds,
                                           "best_epoch": done.best_epoch, "best_val_cider": done.best_score})
        (folder / CHECKPOINT).unlink(missing_ok=True)
        log.info("train: %s seed %d done in %.1fs, best epoch %d (val CIDEr %s)", method, seed, done.seconds,
                 done.best_epoch, f"{done.best_score:.3f}" if done.best_score is not None else "n/a")
        trained.append(f"{method}/seed_{seed}")
        progress.done += 1
    return trained


# --- evaluate and report -------------------------------------------------------------------------


def evaluate(run: CaptionRun) -> Path:
    """Score every unit, the untrained baseline included (see ``fewclip.caption.evaluation``)."""
    from fewclip.caption.evaluation import evaluate_run

    run.write_config()
    return evaluate_run(run)


def report(run: CaptionRun) -> Path | None:
    """report.html from the evaluate stage's files (``fewclip.caption.report``)."""
    run.write_config()
    from fewclip.caption.report import write_caption_report

    return write_caption_report(run.layout)


STAGES: dict[str, Callable[[CaptionRun], Any]] = {"prepare": prepare, "encode": encode, "train": train,
                                                  "evaluate": evaluate, "report": report}
