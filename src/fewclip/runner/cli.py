"""The command line: ``fewclip run [CONFIG] [key=value ...]`` and one command per stage, ``fewclip caption ...`` the
same for captioning (both run the stages of their task on the run skeleton, ``fewclip.runner.skeleton``),
``predict`` and ``export`` with what a run trained, ``compare`` across runs, and ``world`` to pretrain the embedded world's
models."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fewclip.fileio import atomic_write_text
from fewclip.distributed import env_ranks, peer_lost, stop as stop_ranks
from fewclip.interrupt import EXIT_INTERRUPTED, exit_interrupted
from fewclip.report.compare import compare_command
from fewclip.runner.caption_predict import load_captioner, write_caption_predictions
from fewclip.runner.captioning import CAPTIONING
from fewclip.runner.config import ConfigError, default_cache_dir, parse_override
from fewclip.runner.export import export_classifier
from fewclip.runner.folder_config import is_image_folder
from fewclip.runner.folder_init import init_yaml
from fewclip.runner.pipeline import CLASSIFICATION, STAGES
from fewclip.runner.predict import expand_images, load_classifier, write_predictions
from fewclip.runner.run_dir import check_run_kind
from fewclip.runner.skeleton import LookedIn, RunTask, StageRun
from fewclip.runner.tracking import TrackingError  # the module imports wandb only when tracking is on
from fewclip.version import __version__
from fewclip.world.pretrain import PretrainConfig, pretrain
from fewclip.world.pretrain_decoder import DecoderPretrainConfig, pretrain_decoder

STAGE_NAMES = tuple(STAGES)


@dataclass(frozen=True)
class StageCommandsHelp:
    """The help of a task's ``run`` and stage commands."""

    run: str
    config: str
    overrides: str
    force: str


CLASSIFICATION_HELP = StageCommandsHelp(
    run="all stages; without CONFIG, the embedded offline default; `fewclip run FOLDER`: your images",
    config="YAML config, a run directory (its config.yaml), a folder of your images (class subfolders, or train/ "
    "and test/ of them: a config is built for it), or 'default'; omit for the embedded default",
    overrides="dotted overrides, e.g. few_shot.shots=[8,16]",
    force="use output.dir even if its config.yaml differs in model, dataset, prompts, few_shot or splits",
)
CAPTIONING_HELP = StageCommandsHelp(
    run="all stages",
    config="caption YAML config, a caption run directory, or 'default'; omit for the embedded offline default",
    overrides="dotted overrides, e.g. training.epochs=3",
    force="use output.dir even if its config.yaml differs in model.encoder, model.decoder or data",
)


def add_stage_commands(
    commands: argparse._SubParsersAction,
    task: RunTask,  # type: ignore[type-arg]
    texts: StageCommandsHelp,
) -> None:
    """``run`` and one command per stage of ``task``, each taking a config (or run directory), overrides, --force."""
    for name in ("run", *task.stages):
        command = commands.add_parser(name, help=texts.run if name == "run" else f"the {name} stage only")
        command.add_argument("config", nargs="?", help=texts.config)
        command.add_argument("overrides", nargs="*", help=texts.overrides)
        command.add_argument("--force", action="store_true", help=texts.force)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewclip", description="Few-shot classifiers on a frozen CLIP.")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars, only warnings that concern you (no library deprecation notes)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_stage_commands(commands, CLASSIFICATION, CLASSIFICATION_HELP)
    init = commands.add_parser(
        "init", help="write a commented YAML config for a folder of your images, to edit and run with `fewclip run`"
    )
    init.add_argument("folder", help="class subfolders of images, or train/ and test/ (or val/) of them")
    init.add_argument("overrides", nargs="*", help="dotted overrides written into the file, e.g. model.id=...")
    init.add_argument("--out", help="the YAML file (default: the folder's name + .yaml in the working directory)")
    init.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    world = commands.add_parser("world", help="the embedded world: pretrain a tiny CLIP on it")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    pretrain = world_commands.add_parser("pretrain", help="contrastive pretraining of a tiny CLIP on the world")
    pretrain.add_argument("--out", required=True, help="folder for the checkpoint (Hugging Face format)")
    pretrain.add_argument("--minutes", type=float, default=12.0, help="optimisation time budget")
    pretrain.add_argument("--steps", type=int, help="a fixed number of steps instead of a time budget (reproducible)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--images-per-class", type=int, default=400)
    pretrain.add_argument("--batch-size", type=int, default=256)
    decoder = world_commands.add_parser(
        "pretrain-decoder",
        help="language-model pretraining of a tiny GPT-2 on world captions (the captioning default's decoder)",
    )
    decoder.add_argument("--out", required=True, help="folder for the decoder (Hugging Face format)")
    decoder.add_argument("--steps", type=int, default=1500)
    decoder.add_argument("--seed", type=int, default=0)
    decoder.add_argument("--batch-size", type=int, default=64)
    caption = commands.add_parser(
        "caption", help="captioning: a frozen CLIP encoder and a GPT-2 decoder tuned by adapters, prefix tuning or LoRA"
    )
    caption_commands = caption.add_subparsers(dest="caption_command", required=True)
    add_stage_commands(caption_commands, CAPTIONING, CAPTIONING_HELP)
    caption_predict = caption_commands.add_parser("predict", help="caption images with a captioner a run trained")
    caption_predict.add_argument("run_dir", help="the caption run directory (output.dir of the run)")
    caption_predict.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders (recursive)"
    )
    caption_predict.add_argument("--method", help="adapter, prefix, lora or untrained; default: the highest test CIDEr")
    caption_predict.add_argument("--seed", type=int, help="default: the seed with the highest test CIDEr")
    caption_predict.add_argument("--beam", type=int, help="beam size (default: the run's decode.beam_size; 1: greedy)")
    caption_predict.add_argument(
        "--max-length", type=int, help="most tokens per caption (default: the run's decode.max_length)"
    )
    caption_predict.add_argument("--out", help="also write the captions to a .csv or .json file")
    caption_predict.add_argument("--device", help="override the run's model.device (e.g. cpu)")
    predict = commands.add_parser("predict", help="classify images with a head a run trained")
    predict.add_argument(
        "run_dir", help="the run directory (output.dir of the run), or a folder `fewclip export` wrote"
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders (recursive)")
    predict.add_argument(
        "--method",
        help="default: the run's recommended head (results/recommendation.json), "
        "else the first of the run's methods with a trained head",
    )
    predict.add_argument("--shots", type=int, help="default: the recommended or largest shot budget of the method")
    predict.add_argument("--seed", type=int, help="default: the smallest seed trained")
    predict.add_argument("--top-k", type=int, default=5, help="labels to show per image (default 5)")
    predict.add_argument("--out", help="also write the predictions to a .csv or .json file")
    predict.add_argument("--device", help="override the run's model.device (e.g. cpu)")
    export = commands.add_parser(
        "export", help="write a trained head as a classifier folder that predict and load_classifier take anywhere"
    )
    export.add_argument("run_dir", help="the run directory (output.dir of the run)")
    export.add_argument("--method", help="default: the head `fewclip predict RUN_DIR` would use")
    export.add_argument("--shots", type=int, help="default: the recommended or largest shot budget of the method")
    export.add_argument("--seed", type=int, help="default: the smallest seed trained")
    export.add_argument("--out", required=True, help="a new (or empty) folder for the exported classifier")
    export.add_argument(
        "--format",
        choices=("folder", "onnx"),
        default="folder",
        help="onnx: also classifier.onnx, pixels to class probabilities (heads that score frozen features; "
        "pip install 'fewclip[onnx]')",
    )
    export.add_argument(
        "--merged",
        action="store_true",
        help="clip_lora: also the tuned CLIP with its adapters merged, as a plain transformers model folder "
        "(merged/), and the class text features (class_text_features.safetensors)",
    )
    compare = commands.add_parser("compare", help="one paper-style table across runs (compare.csv, compare.html)")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    compare.add_argument("--out", default="compare", help="folder for compare.csv and compare.html (default: compare)")
    return parser


def _world(args: argparse.Namespace) -> int:
    if args.world_command == "pretrain-decoder":
        return _pretrain_decoder(args)
    config = PretrainConfig(
        minutes=args.minutes,
        steps=args.steps,
        seed=args.seed,
        images_per_class=args.images_per_class,
        batch_size=args.batch_size,
    )
    budget = f"--steps {args.steps}" if args.steps else f"--minutes {args.minutes:g}"
    command = (
        f"fewclip world pretrain --out {args.out} {budget} --seed {args.seed} "
        f"--images-per-class {args.images_per_class} --batch-size {args.batch_size}"
    )
    pretrain(config, Path(args.out), log=lambda line: print(line, flush=True), command=command)
    return 0


def _pretrain_decoder(args: argparse.Namespace) -> int:
    config = DecoderPretrainConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size)
    command = (
        f"fewclip world pretrain-decoder --out {args.out} --steps {args.steps} --seed {args.seed} "
        f"--batch-size {args.batch_size}"
    )
    pretrain_decoder(config, Path(args.out), log=lambda line: print(line, flush=True), command=command)
    return 0


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars are drawn on a terminal alone: a log written to a file (stderr redirected, CI) gets one line
    per finished stage and unit instead of every redraw of a bar (carriage returns), and ``-q`` none of either."""
    return not args.quiet and sys.stderr.isatty()


def _no_library_bars() -> None:
    """No progress bars from the Hugging Face libraries either (weight loading, downloads, datasets)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when each library is first imported
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # the libraries already loaded are told directly; one not loaded yet is not imported to be told (that takes
    # seconds): the variables above reach it when it loads
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils.tqdm import disable_progress_bars as disable_dataset_bars

        disable_dataset_bars()


def _quiet_libraries() -> None:
    """None of the libraries' notes to developers: deprecation warnings (FutureWarning, DeprecationWarning)
    raised outside fewclip, and transformers' own log lines below errors. fewclip's warnings stay."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.warnoptions:  # a -W option or PYTHONWARNINGS the user gave stands
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(?!fewclip)")  # any module but fewclip's
    if "transformers" in sys.modules:
        from transformers.utils.logging import set_verbosity_error

        set_verbosity_error()


def _init(args: argparse.Namespace) -> int:
    """``fewclip init FOLDER``: the config ``fewclip run FOLDER`` would run, as a commented YAML file to edit."""
    folder = Path(args.folder)
    if not folder.is_dir() or not is_image_folder(folder):
        return _error(
            f"{folder} is not a folder of images: give one with a subfolder per class (<class>/<image>), or "
            "train/ and test/ (or val/) folders of them"
        )
    out = Path(args.out) if args.out else Path(f"{folder.resolve().name}.yaml")
    if out.exists() and not args.force:
        return _error(f"--out {out} exists; give another --out, or --force to overwrite it")
    try:
        text = init_yaml(folder, args.overrides, out)
        atomic_write_text(out, text)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as err:
        return _error(err)
    print(f"config: {out} (edit it, then: fewclip run {shlex.quote(str(out))})")
    return 0


def _error(message: object) -> int:
    print(f"fewclip: error: {message}", file=sys.stderr)
    return 2


@dataclass(frozen=True)
class Predicting:
    """What one kind of ``predict`` command does, for the steps both kinds share (``_predict_images``)."""

    noun: str  # what the results are called: "predictions", "captions"
    load: Callable[[], Any]  # the predictor a run trained
    describe: Callable[[Any], str]  # which one it is and why, said on stderr
    run: Callable[[Any, list[Path]], Sequence[Any]]  # one result per image: .path, .error (None when it worked)
    lines: Callable[[Any], list[str]]  # what a result prints
    write: Callable[[Path, Sequence[Any], Any], None]  # the results to a .csv or .json file


PREDICT_ERRORS = (
    LookupError,
    ConfigError,
    FileNotFoundError,
    ValueError,
    OSError,
    ImportError,
)  # ImportError: open_clip


def _predict_images(args: argparse.Namespace, counts: Sequence[tuple[str, int | None]], predicting: Predicting) -> int:
    """Exit 0 if at least one image got a result, 1 if none could, 2 on usage errors (``counts``: flags that must be
    at least 1 when given)."""
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        return _error(f"--out {out}: the file name must end in .csv or .json")
    for flag, value in counts:
        if value is not None and value < 1:
            return _error(f"{flag} must be >= 1, got {value}")
    images = expand_images(args.images)
    if not images:
        return _error(f"no images in {', '.join(args.images)} (suffixes .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif)")
    try:
        predictor = predicting.load()
    except PREDICT_ERRORS as err:
        return _error(err)
    print(f"fewclip: {predicting.describe(predictor)}", file=sys.stderr)
    results = predicting.run(predictor, images)
    for result in results:
        if result.error is not None:
            print(f"fewclip: skipped {result.error}", file=sys.stderr)
            continue
        for line in predicting.lines(result):
            print(line)
    if out is not None:
        try:
            predicting.write(out, results, predictor)
        except OSError as err:  # a read-only or missing folder, a full disk: the results above still stand
            return _error(
                f"--out {out}: could not write the {predicting.noun} ({err.strerror or err}); choose a writable path"
            )
        print(f"{predicting.noun}: {out}")
    return 0 if any(r.error is None for r in results) else 1


def _predict(args: argparse.Namespace) -> int:
    """``fewclip predict``: the top-k labels of each image from a head a run trained."""
    return _predict_images(
        args,
        [("--top-k", args.top_k)],
        Predicting(
            "predictions",
            load=lambda: load_classifier(args.run_dir, args.method, args.shots, args.seed, device=args.device),
            describe=lambda classifier: f"predicting with {classifier.unit}: {classifier.why}",
            run=lambda classifier, images: classifier.predict(images, top_k=args.top_k, progress=_bars(args)),
            lines=lambda result: [result.path, *(f"  {p:.4f}  {label}" for label, p in result.top_k)],
            write=write_predictions,
        ),
    )


def _export(args: argparse.Namespace) -> int:
    """``fewclip export``: the head predict would use (or the one asked for) as a self-contained folder."""
    try:
        classifier = export_classifier(
            args.run_dir, args.out, args.method, args.shots, args.seed, args.format, args.merged
        )
    except PREDICT_ERRORS as err:
        return _error(err)
    print(f"fewclip: exported {classifier.unit}: {classifier.why}", file=sys.stderr)
    print(f"classifier: {args.out} (fewclip predict {shlex.quote(str(args.out))} IMAGE...)")
    return 0


def _caption_predict(args: argparse.Namespace) -> int:
    """``fewclip caption predict``: a caption of each image from a captioner a run trained."""
    return _predict_images(
        args,
        [("--beam", args.beam), ("--max-length", args.max_length)],
        Predicting(
            "captions",
            load=lambda: load_captioner(args.run_dir, args.method, args.seed, device=args.device),
            describe=lambda captioner: f"captioning with {captioner.method} seed {captioner.seed}: {captioner.why}",
            run=lambda captioner, images: captioner.caption_files(images, beam=args.beam, max_length=args.max_length),
            lines=lambda result: [f"{result.path}\t{result.caption}"],
            write=write_caption_predictions,
        ),
    )


@dataclass(frozen=True)
class ConfigArgument:
    """What a command's config argument stands for: a config file (or None: a base config), the overrides (a run
    directory adds its output.dir), and a folder of images when one was given instead."""

    path: str | None
    overrides: list[str]
    images: Path | None = None


def _split_config_arg(task: RunTask, config: str | None, overrides: list[str], command: str) -> ConfigArgument:
    """``fewclip run few_shot.shots=[2]`` has no config file: the first word is an override. A run directory
    stands for its config.yaml, with output.dir pointing at it (wherever the command runs from); a run directory
    of the other kind (captioning, classification) is refused, naming the command for it. A folder of images
    (class subfolders, or train/ and test/ of them) stands for the config the task builds for it."""
    if config is not None and "=" in config and not Path(config).is_file():
        return ConfigArgument(None, [config, *overrides])
    if config is not None and Path(config).is_dir():
        resolved = Path(config) / "config.yaml"
        run, config_file = task.folder_words
        if not resolved.is_file():
            if task.folder_config is not None and task.is_input_folder(Path(config)):
                return ConfigArgument(None, overrides, Path(config))
            kind, shape = task.input_folder_words
            raise ConfigError(
                f"{config} is a folder without config.yaml, so not a fewclip {run} directory"
                f"{f', nor {kind} ({shape})' if task.folder_config is not None else ''}; give a {config_file} or a "
                f"{run} directory{f', or {kind}' if task.folder_config is not None else ''}"
            )
        check_run_kind(Path(config), task.kind, f"{command} {config}")
        return ConfigArgument(str(resolved), [f"output.dir={config}", *overrides])
    return ConfigArgument(None if config == "default" else config, overrides)


def _looked_in(config_path: str | None, overrides: Sequence[str]) -> LookedIn:
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
    if not _bars(args):
        _no_library_bars()
    if args.command in ("world", "init", "predict", "export", "caption", "compare") and env_ranks().distributed:
        return _error(
            f"`fewclip {args.command}` runs in one process; torchrun is for run, prepare, features, train, "
            "evaluate and report. Start it without torchrun"
        )
    if args.command == "world":
        return _world(args)
    if args.command == "init":
        return _init(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "export":
        return _export(args)
    if args.command == "caption" and args.caption_command == "predict":
        return _caption_predict(args)
    if args.command == "caption":
        return _run_stages(CAPTIONING, args.caption_command, args)
    if args.command == "compare":
        return compare_command(args.run_dirs, args.out)
    return _run_stages(CLASSIFICATION, args.command, args)


def _base_config(task: RunTask, argument: ConfigArgument) -> dict[str, Any] | None:
    """What the overrides apply to: the config built for a folder of images, the embedded default without a
    config file, else nothing (the file)."""
    cache = Path(default_cache_dir())
    if argument.images is not None and task.folder_config is not None:
        return task.folder_config(argument.images, argument.overrides, cache)
    return task.embedded_config(cache) if argument.path is None else None


def _run_stages(task: RunTask, command: str, args: argparse.Namespace) -> int:
    """``command`` (``run`` or one stage) of ``task``: exit 0, 2 with a message naming what to fix, 130 when
    interrupted (the line says how far the stage got)."""
    stages = tuple(task.stages) if command == "run" else (command,)
    session = StageRun(task, stages)
    try:
        argument = _split_config_arg(task, args.config, list(args.overrides), command)
        config_path, overrides = argument.path, argument.overrides
        if not _bars(args):
            overrides.append("output.progress=false")
        base = _base_config(task, argument)
        config = task.load_config(config_path, overrides, base=base)
        context = session(config, force=args.force, quiet=args.quiet, looked_in=_looked_in(config_path, overrides))
    except (ConfigError, FileNotFoundError, ValueError, KeyError, OSError, ImportError, TrackingError) as err:
        return _error(err.args[0] if isinstance(err, KeyError) and err.args else err)  # RunDirError: a ValueError
    except KeyboardInterrupt:
        return exit_interrupted(session.interrupted_line()) if session.ranks.is_main else EXIT_INTERRUPTED
    except RuntimeError as err:
        if not peer_lost(err, session.ranks):
            raise
        return _error(
            f"rank {session.ranks.rank}: another rank of this torchrun job stopped (its own error is above; "
            f"{str(err).splitlines()[0][:200]}). Fix that and re-run the same command: it resumes"
        )
    finally:
        stop_ranks()
    if not session.ranks.is_main:  # rank 0 speaks for a torchrun job
        return 0
    for line in task.outcome(context, stages):
        print(line)
    if session.offline_wandb is not None:
        print(f"wandb: offline run in {session.offline_wandb} (upload with `wandb sync {session.offline_wandb}`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
