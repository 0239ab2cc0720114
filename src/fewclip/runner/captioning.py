"""The captioning task on the run skeleton (``CAPTIONING``: ``fewclip caption run`` and its stage commands), and
its stages, each a plain function that reads what the last one wrote (``CaptionLayout``):

prepare  -> data/{train,val,test}.json (COCO format, each image with its sha1), data/skipped.csv
encode   -> frozen encoder tokens of every split's images in the shared cache (when within the budget)
train    -> models/<method>/seed_S/captioner.{safetensors,json}, results/history/<method>/seed_S.csv
evaluate -> results/caption_summary.csv, results/predictions/..., results/attention/...
            (``fewclip.runner.caption_evaluation``)
report   -> results/caption_answer.json, report.html (``fewclip.report.caption_page``)

Every stage skips what is done: prepare when the split files were written from the same data, train a
(method, seed) whose saved captioner has the same fit key, evaluate a unit whose attention.json has the
same evaluation key. A killed training resumes from its checkpoint (``caption.train``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from fewclip.backbones import check_backbone
from fewclip.backbones.model_source import WORLD_ALIAS, WORLD_DECODER_ALIAS
from fewclip.caption.artifacts import save_caption_model
from fewclip.caption.data import CaptionData, CaptionItem, load_caption_data
from fewclip.caption.decode import DecodeConfig, caption_tokens
from fewclip.caption.encoder_cache import EncoderTokens
from fewclip.caption.metrics import text_scores
from fewclip.caption.model import CaptionModel, resolve_caption_model
from fewclip.caption.splits import SPLITS, prepare_key, prepared_with, split_json
from fewclip.caption.train import train_captioner
from fewclip.fileio import read_csv, read_json, remove_stale_temporaries, write_csv, write_json
from fewclip.interrupt import Progress
from fewclip.report.caption_page import write_caption_report
from fewclip.runner.caption_config import CaptionConfig, load_caption_config
from fewclip.runner.caption_folder import caption_folder_config, is_caption_folder
from fewclip.runner.caption_context import CaptionRun, fit_key, saved_fit_key
from fewclip.runner.caption_evaluation import evaluate_run
from fewclip.runner.run_dir import RunDirRules
from fewclip.runner.skeleton import LookedIn, RunTask

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"  # beside the captioner in its model_dir while it trains


# --- prepare -------------------------------------------------------------------------------------


def prepare(run: CaptionRun) -> CaptionData:
    """Load and split the captions; write the split files and the skipped images (kept if already there)."""
    layout, key = run.layout, prepare_key(run.config.data)
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
        log.info(
            "encode: the encoder tokens exceed training.cache_budget_mb=%g; they are computed on the fly",
            run.config.training.cache_budget_mb,
        )
    return bool(tokens.cached)


# --- train ---------------------------------------------------------------------------------------


def decode_split(
    model: CaptionModel, tokens: EncoderTokens, items: Sequence[CaptionItem], settings: DecodeConfig, batch_size: int
) -> list[str]:
    """Captions of ``items`` in order, decoded in batches."""
    captions: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        captions += caption_tokens(model, tokens([item.sha1 for item in batch]), settings)
    return captions


def split_cider(
    model: CaptionModel, tokens: EncoderTokens, items: Sequence[CaptionItem], settings: DecodeConfig, batch_size: int
) -> float:
    """CIDEr-D of ``model``'s captions of ``items`` (what selects a training epoch)."""
    captions = decode_split(model, tokens, items, settings, batch_size)
    references = {item.image_id: list(item.captions) for item in items}
    return text_scores(references, {item.image_id: c for item, c in zip(items, captions)}).cider


def train(run: CaptionRun, on_epoch: Callable[[str, int, dict[str, float]], None] | None = None) -> list[str]:
    """Train every (method, seed) not trained with these inputs; returns the units trained now. ``on_epoch(method,
    seed, row)`` is called as each epoch ends."""
    run.write_config()
    config, layout = run.config, run.layout
    pending = [
        (m, s)
        for m in config.methods
        for s in config.seeds
        if saved_fit_key(layout, m, s) != fit_key(config, m, s, run.data, run.model_weights)
    ]
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
        log.info(
            "train: %s seed %d (%d trainable parameters, %d captions)",
            method,
            seed,
            model.trainable_count(),
            len(examples),
        )
        done = train_captioner(
            model,
            examples,
            tokens,
            config.training,
            seed=seed,
            val_score=val_score,
            checkpoint=folder / CHECKPOINT,
            on_epoch=epoch_hook,
            progress=config.output.progress,
        )
        columns = ("epoch", "train_loss", "lr", "val_cider", "seconds")
        write_csv(layout.history(method, seed), columns, ([row.get(c, "") for c in columns] for row in done.history))
        key = fit_key(config, method, seed, data, run.model_weights)
        save_caption_model(
            model,
            folder,
            {
                "fit_key": key,
                "method": method,
                "seed": seed,
                "train_seconds": done.seconds,
                "best_epoch": done.best_epoch,
                "best_val_cider": done.best_score,
            },
        )
        (folder / CHECKPOINT).unlink(missing_ok=True)
        log.info(
            "train: %s seed %d done in %.1fs, best epoch %d (val CIDEr %s)",
            method,
            seed,
            done.seconds,
            done.best_epoch,
            f"{done.best_score:.3f}" if done.best_score is not None else "n/a",
        )
        trained.append(f"{method}/seed_{seed}")
        progress.done += 1
    return trained


# --- evaluate and report -------------------------------------------------------------------------


def evaluate(run: CaptionRun) -> Path:
    """Score every unit, the untrained baseline included (see ``fewclip.runner.caption_evaluation``)."""
    run.write_config()
    return evaluate_run(run)


def report(run: CaptionRun) -> Path | None:
    """results/caption_answer.json and report.html from the evaluate stage's files (``fewclip.report.caption_page``)."""
    run.write_config()
    return write_caption_report(run.layout)


STAGES: dict[str, Callable[[CaptionRun], Any]] = {
    "prepare": prepare,
    "encode": encode,
    "train": train,
    "evaluate": evaluate,
    "report": report,
}


# --- the task ------------------------------------------------------------------------------------

# A captioning run is defined by its encoder, decoder and data; every other key may change, because a trained
# captioner records a fit key over its own inputs (and is retrained when it changes) and an evaluation records its
# key likewise. Caption sources list their image files one by one, so a run directory inside an image folder never
# becomes data: there are no folders to keep it out of.
RUN_DEFINING = (
    "model.encoder",
    "model.encoder_library",
    "model.encoder_pretrained",
    "model.encoder_revision",
    "model.decoder",
    "model.decoder_revision",
    "data",
)


def run_defining(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_DEFINING)


CAPTION_RULES = RunDirRules(
    "caption", load_caption_config, run_defining, "captioners trained on other inputs are then trained again"
)
DEFAULT_OUTPUT = "runs/caption-default"


def embedded_caption_config(cache_dir: Path) -> dict[str, Any]:
    """The embedded offline default (``fewclip caption run`` with no config): the shipped world CLIP and world
    decoder on a world caption set, adapter, prefix and LoRA, one seed, 480 images with 5 captions each. Every
    world image has several true captions (colour, shape, size, position in different words) and the decoder
    already speaks the world's language, so what the methods must learn is to read the image: the untrained
    decoder says one plausible caption for every image, a tuned one names what is there. Sized to take a few
    minutes on 2 CPU cores."""
    return {
        "name": "embedded-world-captions",
        "methods": ["adapter", "prefix", "lora"],
        "seeds": [0],
        "model": {"encoder": WORLD_ALIAS, "decoder": WORLD_DECODER_ALIAS},
        "data": {"source": "world", "world_images": 480, "world_captions_per_image": 5, "seed": 0},
        # the reference recipe's schedule, with the rate a 2-layer, 128-wide decoder needs (1e-4 is for GPT-2)
        "training": {"epochs": 10, "batch_size": 32, "lr": 3e-3, "lr_step_epochs": 3, "lr_gamma": 0.5},
        "decode": {"beam_size": 1, "max_length": 20},
        "attention": {"fixed_images": 3},
        "output": {"dir": DEFAULT_OUTPUT},
        "cache": {"dir": str(cache_dir)},
    }


def check_models(config: CaptionConfig) -> None:
    """Resolve the encoder, decoder and CLIPScore model ids (folder, alias, or hub id usable now)."""
    named = [
        ("model.encoder", config.model.encoder, config.model.encoder_revision),
        ("model.decoder", config.model.decoder, config.model.decoder_revision),
        ("clipscore_model", config.clipscore_model, None),
    ]
    if config.model.encoder_library != "hf":  # another library's model: its own check (files, package installed)
        check_backbone(config.model.encoder_model())
        named = named[1:]
    for key, model_id, revision in named:
        if model_id is not None:
            resolve_caption_model(key, model_id, revision)


def check(config: CaptionConfig, stages: tuple[str, ...], looked_in: LookedIn) -> None:
    """Before the run directory is touched: a missing encoder or decoder fails where the stages load them."""
    if set(stages) & {"encode", "train", "evaluate"}:
        check_models(config)


def outcome(run: CaptionRun, stages: tuple[str, ...]) -> list[str]:
    """What a finished command prints: after evaluate or report, the test rows of caption_summary.csv, one line per
    (method, seed), and the file; after report, the answer in plain words (the report's first sentences) and the
    report."""
    lines = []
    if ("evaluate" in stages or "report" in stages) and run.layout.summary.is_file():
        for row in (r for r in read_csv(run.layout.summary) if r["split"] == "test"):
            lines.append(
                f"{row['method']:>9} seed {row['seed']}: test CIDEr {float(row['cider']):.3f}  "
                f"CLIPScore {float(row['clipscore']):.3f}  RefCLIPScore {float(row['refclipscore']):.3f}  "
                f"BLEU-4 {float(row['bleu4']):.3f}  trainable {row['trainable_params']}"
            )
        lines.append(f"results: {run.layout.summary}")
    if "report" in stages and run.layout.answer.is_file():
        lines += read_json(run.layout.answer).get("plain", [])
    if "report" in stages and run.layout.report.is_file():
        lines.append(f"report: {run.layout.report}")
    return lines


CAPTIONING = RunTask(
    kind="caption",
    stages=STAGES,
    context=CaptionRun,
    load_config=load_caption_config,
    embedded_config=embedded_caption_config,
    rules=CAPTION_RULES,
    check=check,
    outcome=outcome,
    folder_words=("caption run", "caption YAML config"),
    folder_config=caption_folder_config,
    is_input_folder=is_caption_folder,
    input_folder_words=("a folder of captioned images", "its images and one path,caption CSV or COCO JSON"),
    stage_log="caption %s done in %.1fs",
)
