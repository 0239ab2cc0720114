"""``fewclip run [CONFIG] [key=value ...]``, one command per stage, and ``fewclip predict`` with a saved head."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from fewclip import __version__
from fewclip.runner.config import ConfigError, default_cache_dir, load_config, parse_override
from fewclip.fileio import read_json
from fewclip.interrupt import EXIT_INTERRUPTED, exit_interrupted, interrupted_line
from fewclip.distributed import env_ranks
from fewclip.threads import THREADS_ENV, apply_threads
from fewclip.runner.tracking import Tracker, TrackingError, preflight  # imports wandb only when tracking is on

STAGE_NAMES = ("prepare", "features", "train", "evaluate", "report")
FORCE_HELP = "use output.dir even if its config.yaml differs in model, dataset, prompts, few_shot or splits"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewclip", description="Few-shot classifiers on a frozen CLIP.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only warnings that concern "
                        "you (no library deprecation notes)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="all stages; without CONFIG, the embedded offline default")
    run.add_argument("config", nargs="?", help="YAML config or a run directory (omit for the embedded default)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. few_shot.shots=[8,16]")
    run.add_argument("--force", action="store_true", help=FORCE_HELP)
    for stage in STAGE_NAMES:
        sub = commands.add_parser(stage, help=f"the {stage} stage only")
        sub.add_argument("config", nargs="?", help="YAML config, a run directory (its config.yaml), or 'default'; "
                         "omit for the embedded default")
        sub.add_argument("overrides", nargs="*")
        sub.add_argument("--force", action="store_true", help=FORCE_HELP)
    world = commands.add_parser("world", help="the embedded world: pretrain a tiny CLIP on it")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    pretrain = world_commands.add_parser("pretrain", help="contrastive pretraining of a tiny CLIP on the world")
    pretrain.add_argument("--out", required=True, help="folder for the checkpoint (Hugging Face format)")
    pretrain.add_argument("--minutes", type=float, default=12.0, help="optimisation time budget")
    pretrain.add_argument("--steps", type=int, help="a fixed number of steps instead of a time budget (reproducible)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--images-per-class", type=int, default=400)
    pretrain.add_argument("--batch-size", type=int, default=256)
    decoder = world_commands.add_parser("pretrain-decoder", help="language-model pretraining of a tiny GPT-2 on "
                                        "world captions (the captioning default's decoder)")
    decoder.add_argument("--out", required=True, help="folder for the decoder (Hugging Face format)")
    decoder.add_argument("--steps", type=int, default=1500)
    decoder.add_argument("--seed", type=int, default=0)
    decoder.add_argument("--batch-size", type=int, default=64)
    from fewclip.caption.cli import add_caption_commands

    add_caption_commands(commands)
    predict = commands.add_parser("predict", help="classify images with a head a run trained")
    predict.add_argument("run_dir", help="the run directory (output.dir of the run)")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders (recursive)")
    predict.add_argument("--method", help="default: the run's recommended head (results/recommendation.json), "
                         "else the first of the run's methods with a trained head")
    predict.add_argument("--shots", type=int, help="default: the recommended or largest shot budget of the method")
    predict.add_argument("--seed", type=int, help="default: the smallest seed trained")
    predict.add_argument("--top-k", type=int, default=5, help="labels to show per image (default 5)")
    predict.add_argument("--out", help="also write the predictions to a .csv or .json file")
    predict.add_argument("--device", help="override the run's model.device (e.g. cpu)")
    compare = commands.add_parser("compare", help="one paper-style table across runs (compare.csv, compare.html)")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    compare.add_argument("--out", default="compare", help="folder for compare.csv and compare.html (default: compare)")
    return parser


def _world(args: argparse.Namespace) -> int:
    if args.world_command == "pretrain-decoder":
        return _pretrain_decoder(args)
    from fewclip.world.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(minutes=args.minutes, steps=args.steps, seed=args.seed,
                            images_per_class=args.images_per_class, batch_size=args.batch_size)
    budget = f"--steps {args.steps}" if args.steps else f"--minutes {args.minutes:g}"
    command = (f"fewclip world pretrain --out {args.out} {budget} --seed {args.seed} "
               f"--images-per-class {args.images_per_class} --batch-size {args.batch_size}")
    pretrain(config, Path(args.out), log=lambda line: print(line, flush=True), command=command)
    return 0


def _pretrain_decoder(args: argparse.Namespace) -> int:
    from fewclip.world.pretrain_decoder import DecoderPretrainConfig, pretrain_decoder

    config = DecoderPretrainConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size)
    command = (f"fewclip world pretrain-decoder --out {args.out} --steps {args.steps} --seed {args.seed} "
               f"--batch-size {args.batch_size}")
    pretrain_decoder(config, Path(args.out), log=lambda line: print(line, flush=True), command=command)
    return 0


def _quiet_libraries() -> None:
    """No progress bars from the Hugging Face libraries either (weight loading, downloads, datasets), and
    none of the libraries' notes to developers: deprecation warnings (FutureWarning, DeprecationWarning)
    raised outside fewclip, and transformers' own log lines below errors. fewclip's warnings stay."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when each library is first imported
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.warnoptions:  # a -W option or PYTHONWARNINGS the user gave stands
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(?!fewclip)")  # any module but fewclip's
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils.logging import disable_progress_bar, set_verbosity_error

        disable_progress_bar()
        set_verbosity_error()
    if "datasets" in sys.modules:
        from datasets.utils.tqdm import disable_progress_bars as disable_dataset_bars

        disable_dataset_bars()


def _error(message: object) -> int:
    print(f"fewclip: error: {message}", file=sys.stderr)
    return 2


def _predict(args: argparse.Namespace) -> int:
    """Exit 0 if at least one image was classified, 1 if none could be, 2 on usage errors."""
    from fewclip.runner.predict import HeadNotTrained, expand_images, load_classifier, write_predictions

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        return _error(f"--out {out}: the file name must end in .csv or .json")
    if args.top_k < 1:
        return _error(f"--top-k must be >= 1, got {args.top_k}")
    images = expand_images(args.images)
    if not images:
        return _error(f"no images in {', '.join(args.images)} (suffixes .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif)")
    try:
        classifier = load_classifier(args.run_dir, args.method, args.shots, args.seed, device=args.device)
    except (HeadNotTrained, ConfigError, FileNotFoundError, ValueError, OSError, ImportError) as err:  # ImportError: open_clip missing
        return _error(err)
    print(f"fewclip: predicting with {classifier.unit}: {classifier.why}", file=sys.stderr)
    results = classifier.predict(images, top_k=args.top_k, progress=not args.quiet)
    for result in results:
        if result.error is not None:
            print(f"fewclip: skipped {result.error}", file=sys.stderr)
            continue
        print(result.path)
        for label, probability in result.top_k:
            print(f"  {probability:.4f}  {label}")
    if out is not None:
        try:
            write_predictions(out, results, classifier)
        except OSError as err:  # a read-only or missing folder, a full disk: the predictions above still stand
            return _error(f"--out {out}: could not write the predictions ({err.strerror or err}); "
                          "choose a writable path")
        print(f"predictions: {out}")
    return 0 if any(r.error is None for r in results) else 1


def _split_config_arg(config: str | None, overrides: list[str], command: str) -> tuple[str | None, list[str]]:
    """``fewclip run few_shot.shots=[2]`` has no config file: the first word is an override. A run directory
    stands for its config.yaml, with output.dir pointing at it (wherever the command runs from); a captioning
    run's directory is refused, naming ``fewclip caption <command>``."""
    from fewclip.runner.run_dir import check_run_kind

    if config is not None and "=" in config and not Path(config).is_file():
        return None, [config, *overrides]
    if config is not None and Path(config).is_dir():
        resolved = Path(config) / "config.yaml"
        if not resolved.is_file():
            raise ConfigError(f"{config} is a folder without config.yaml, so not a fewclip run directory; "
                              "give a YAML config file or a run directory")
        check_run_kind(Path(config), "classification", f"{command} {config}")
        return str(resolved), [f"output.dir={config}", *overrides]
    return (None if config == "default" else config), overrides


def _looked_in(config_path: str | None, overrides: Sequence[str]) -> Callable[[str], list[Path]]:
    """Where a relative path under a dotted key was looked for: beside the config file and in the working directory
    when the file wrote it, in the working directory when the command line (or the embedded default) gave it."""
    given = [".".join(parse_override(text)[0]) for text in overrides if "=" in text]

    def folders(key: str) -> list[Path]:
        on_command_line = any(key == k or key.startswith((k + ".", k + "[")) for k in given)
        if config_path is None or on_command_line:
            return [Path.cwd()]
        return [Path(config_path).parent.resolve(), Path.cwd()]

    return folders


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except KeyboardInterrupt:  # the stages say how far they got (below); predict, world, compare only this
        return exit_interrupted()


def _command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.quiet:
        _quiet_libraries()
    if args.command in ("world", "predict", "caption", "compare") and env_ranks().distributed:
        return _error(f"`fewclip {args.command}` runs in one process; torchrun is for run, prepare, features, train, "
                      "evaluate and report. Start it without torchrun")
    if args.command == "world":
        return _world(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "caption":
        from fewclip.caption.cli import caption_main

        return caption_main(args)
    if args.command == "compare":
        from fewclip.report.compare import compare_command

        return compare_command(args.run_dirs, args.out)
    from fewclip.runner import pipeline
    from fewclip.backbones import check_backbone
    from fewclip.runner.run_context import RunContext, check_paths
    from fewclip.runner.demo import embedded_config
    from fewclip.runner.run_dir import RunDirError, open_run
    from fewclip.distributed import SINGLE, peer_lost, start as start_ranks, stop as stop_ranks

    try:
        config_path, overrides = _split_config_arg(args.config, list(args.overrides), args.command)
    except (ConfigError, RunDirError) as err:
        return _error(err)
    if args.quiet:
        overrides.append("output.progress=false")
    tracker, ranks = None, SINGLE
    stage: str | None = None  # the stage running, and its context: what an interrupted command reports
    running: RunContext | None = None
    try:
        base = embedded_config(Path(default_cache_dir())) if config_path is None else None
        config = load_config(config_path, overrides, base=base)
        ranks = start_ranks(config.model.device)  # joins a torchrun job; one process otherwise
        threads = apply_threads(config.runtime.threads)
        logging.info("torch uses %d CPU thread%s (runtime.threads / %s)", threads, "s" * (threads != 1), THREADS_ENV)
        if not ranks.is_main:  # rank 0 alone tracks, evaluates and reports
            config = config.model_copy(update={"wandb": config.wandb.model_copy(update={"mode": "disabled"})})
        stages = tuple(pipeline.STAGES) if args.command == "run" else (args.command,)
        if config.wandb.mode != "disabled":
            preflight(config.wandb)  # fails before the run dir is touched and the stages start, not after
        if args.command in ("run", "features", "train"):
            check_backbone(config.model)  # a missing model or library fails before the run dir is touched
        check_paths(config, stages, _looked_in(config_path, overrides))  # the same: before anything is created
        # open_run: the run dir is fewclip's, holds this config (or --force) and is locked for the command
        with open_run(config, force=args.force, ranks=ranks), logging_redirect_tqdm():  # logs above the bars
            tracker = Tracker.for_config(config, args.quiet)  # no-op when disabled
            ctx = RunContext(config, on_trained=tracker.log_history if tracker.enabled else None,
                             on_epoch=tracker.log_epoch if tracker.enabled else None, ranks=ranks)
            running = ctx
            for stage in stages:
                start, ctx.progress = time.perf_counter(), None  # each stage says its own progress, if any
                pipeline.STAGES[stage](ctx)
                logging.info("%s done in %.1fs", stage, time.perf_counter() - start)
            _log_outputs(tracker, stages)
    except (ConfigError, FileNotFoundError, ValueError, KeyError, OSError, ImportError, TrackingError) as err:
        return _error(err.args[0] if isinstance(err, KeyError) and err.args else err)
    except KeyboardInterrupt:
        line = interrupted_line(stage, running.progress if running is not None else None)
        return exit_interrupted(line) if ranks.is_main else EXIT_INTERRUPTED  # rank 0 speaks for a torchrun job
    except RuntimeError as err:
        if not peer_lost(err, ranks):
            raise
        return _error(f"rank {ranks.rank}: another rank of this torchrun job stopped (its own error is above; "
                      f"{str(err).splitlines()[0][:200]}). Fix that and re-run the same command: it resumes")
    finally:
        folder = _finish(tracker)
        stop_ranks()
    if not ranks.is_main:
        return 0
    if args.command == "evaluate":
        print(f"results: {ctx.layout.summary}")
    if args.command in ("run", "report") and ctx.layout.answer.is_file():
        print(read_json(ctx.layout.answer)["headline"])
        print(f"table: {ctx.layout.aggregate / 'accuracy_table.csv'}")
    if args.command in ("run", "report") and ctx.layout.report.is_file():
        print(f"report: {ctx.layout.report}")
    if folder is not None and config.wandb.mode == "offline":
        print(f"wandb: offline run in {folder} (upload with `wandb sync {folder}`)")
    return 0


def _log_outputs(tracker: Tracker, stages: Sequence[str]) -> None:
    """After the stages: histories not logged live (trained earlier), results and the report, as far as the
    command produced them (units were logged live as they trained)."""
    if "train" in stages or "evaluate" in stages:
        tracker.log_histories()
    if "evaluate" in stages:
        tracker.log_results()
    if "report" in stages:
        tracker.log_report()


def _finish(tracker: Tracker | None) -> Path | None:
    """Close the wandb run (also after a failed stage: what was logged is kept); its local folder, if any."""
    if tracker is None or not tracker.enabled:
        return None
    folder = Path(tracker.run.settings.sync_dir)
    tracker.finish()
    return folder


if __name__ == "__main__":
    sys.exit(main())
