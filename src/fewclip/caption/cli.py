"""``fewclip caption run [CONFIG] [key=value ...]``, one command per stage, and ``fewclip caption predict``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fewclip.runner.config import ConfigError, default_cache_dir
from fewclip.interrupt import exit_interrupted, interrupted_line

if TYPE_CHECKING:
    from fewclip.caption.config import CaptionConfig
    from fewclip.caption.run_context import CaptionRun

STAGE_NAMES = ("prepare", "encode", "train", "evaluate", "report")
FORCE_HELP = "use output.dir even if its config.yaml differs in model.encoder, model.decoder or data"


def add_caption_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``fewclip caption ...`` under the main parser's commands."""
    caption = commands.add_parser("caption", help="captioning: a frozen CLIP encoder and a GPT-2 decoder tuned by "
                                  "adapters, prefix tuning or LoRA")
    sub = caption.add_subparsers(dest="caption_command", required=True)
    for name in ("run", *STAGE_NAMES):
        stage = sub.add_parser(name, help="all stages" if name == "run" else f"the {name} stage only")
        stage.add_argument("config", nargs="?", help="caption YAML config, a caption run directory, or 'default'; "
                           "omit for the embedded offline default")
        stage.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.epochs=3")
        stage.add_argument("--force", action="store_true", help=FORCE_HELP)
    predict = sub.add_parser("predict", help="caption images with a captioner a run trained")
    predict.add_argument("run_dir", help="the caption run directory (output.dir of the run)")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders (recursive)")
    predict.add_argument("--method", help="adapter, prefix, lora or untrained; default: the highest test CIDEr")
    predict.add_argument("--seed", type=int, help="default: the seed with the highest test CIDEr")
    predict.add_argument("--beam", type=int, help="beam size (default: the run's decode.beam_size; 1: greedy)")
    predict.add_argument("--max-length", type=int, help="most tokens per caption (default: the run's decode.max_length)")
    predict.add_argument("--out", help="also write the captions to a .csv or .json file")
    predict.add_argument("--device", help="override the run's model.device (e.g. cpu)")


def _error(message: object) -> int:
    print(f"fewclip: error: {message}", file=sys.stderr)
    return 2


def _config_arg(config: str | None, overrides: list[str], command: str) -> tuple[str | None, list[str]]:
    """A first word with '=' is an override; a run directory stands for its config.yaml and output.dir (a
    classification run's directory is refused, naming ``fewclip <command>``)."""
    from fewclip.runner.run_dir import check_run_kind

    if config is not None and "=" in config and not Path(config).is_file():
        return None, [config, *overrides]
    if config is not None and Path(config).is_dir():
        resolved = Path(config) / "config.yaml"
        if not resolved.is_file():
            raise ConfigError(f"{config} is a folder without config.yaml, so not a fewclip caption run directory; "
                              "give a caption YAML config or a caption run directory")
        check_run_kind(Path(config), "caption", f"{command} {config}")
        return str(resolved), [f"output.dir={config}", *overrides]
    return (None if config == "default" else config), overrides


def check_models(config: "CaptionConfig") -> None:
    """Resolve the encoder, decoder and CLIPScore model ids (folder, alias, or hub id usable now)."""
    from fewclip.caption.model import resolve_caption_model

    named = [("model.encoder", config.model.encoder, config.model.encoder_revision),
             ("model.decoder", config.model.decoder, config.model.decoder_revision),
             ("clipscore_model", config.clipscore_model, None)]
    for key, model_id, revision in named:
        if model_id is not None:
            resolve_caption_model(key, model_id, revision)


def caption_main(args: argparse.Namespace) -> int:
    """Run ``fewclip caption <command>``; exit code 0, or 2 with a message naming what to fix."""
    if args.caption_command == "predict":
        return _predict(args)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from fewclip.runner.run_dir import RunDirError
    from fewclip.threads import apply_threads
    from fewclip.caption.config import load_caption_config
    from fewclip.caption.embedded import embedded_caption_config
    from fewclip.caption.pipeline import STAGES
    from fewclip.caption.run_context import CaptionRun
    from fewclip.caption.run_dir import open_caption_run

    stage: str | None = None  # the stage running, and its run: what an interrupted command reports
    running: CaptionRun | None = None
    try:
        config_path, overrides = _config_arg(args.config, list(args.overrides), args.caption_command)
        if args.quiet:
            overrides.append("output.progress=false")
        base = embedded_caption_config(Path(default_cache_dir())) if config_path is None else None
        config = load_caption_config(config_path, overrides, base=base)
        apply_threads(config.runtime.threads)
        stages = tuple(STAGES) if args.caption_command == "run" else (args.caption_command,)
        if set(stages) & {"encode", "train", "evaluate"}:
            check_models(config)  # a missing encoder or decoder fails before the run dir is touched
        with open_caption_run(config, force=args.force), logging_redirect_tqdm():
            run = running = CaptionRun(config)
            for stage in stages:
                start, run.progress = time.perf_counter(), None  # each stage says its own progress, if any
                STAGES[stage](run)
                logging.info("caption %s done in %.1fs", stage, time.perf_counter() - start)
    except (ConfigError, RunDirError, FileNotFoundError, ValueError, KeyError, OSError, ImportError) as err:
        return _error(err.args[0] if isinstance(err, KeyError) and err.args else err)
    except KeyboardInterrupt:
        return exit_interrupted(interrupted_line(stage, running.progress if running is not None else None))
    if "evaluate" in stages or "report" in stages:
        _print_summary(run)
    if run.layout.report.is_file() and "report" in stages:
        print(f"report: {run.layout.report}")
    return 0


def _print_summary(run: "CaptionRun") -> None:
    """The test rows of caption_summary.csv, one line per (method, seed)."""
    from fewclip.fileio import read_csv

    layout = run.layout
    if not layout.summary.is_file():
        return
    rows = [r for r in read_csv(layout.summary) if r["split"] == "test"]
    for row in rows:
        print(f"{row['method']:>9} seed {row['seed']}: test CIDEr {float(row['cider']):.3f}  "
              f"CLIPScore {float(row['clipscore']):.3f}  RefCLIPScore {float(row['refclipscore']):.3f}  "
              f"BLEU-4 {float(row['bleu4']):.3f}  trainable {row['trainable_params']}")
    print(f"results: {layout.summary}")


def _predict(args: argparse.Namespace) -> int:
    """Exit 0 if at least one image was captioned, 1 if none could be, 2 on usage errors."""
    from fewclip.runner.predict import expand_images
    from fewclip.caption.predict import CaptionerNotTrained, load_captioner, write_caption_predictions

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        return _error(f"--out {out}: the file name must end in .csv or .json")
    for flag, value in (("--beam", args.beam), ("--max-length", args.max_length)):
        if value is not None and value < 1:
            return _error(f"{flag} must be >= 1, got {value}")
    images = expand_images(args.images)
    if not images:
        return _error(f"no images in {', '.join(args.images)} (suffixes .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif)")
    try:
        captioner = load_captioner(args.run_dir, args.method, args.seed, device=args.device)
    except (CaptionerNotTrained, ConfigError, FileNotFoundError, ValueError, OSError) as err:
        return _error(err)
    print(f"fewclip: captioning with {captioner.method} seed {captioner.seed}: {captioner.why}", file=sys.stderr)
    results = captioner.caption_files(images, beam=args.beam, max_length=args.max_length)
    for result in results:
        if result.error is not None:
            print(f"fewclip: skipped {result.error}", file=sys.stderr)
        else:
            print(f"{result.path}\t{result.caption}")
    if out is not None:
        try:
            write_caption_predictions(out, results, captioner)
        except OSError as err:
            return _error(f"--out {out}: could not write the captions ({err.strerror or err}); choose a writable path")
        print(f"captions: {out}")
    return 0 if any(r.error is None for r in results) else 1
