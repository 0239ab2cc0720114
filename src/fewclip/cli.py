"""``fewclip run [CONFIG] [key=value ...]`` and one command per stage."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import ConfigError, default_cache_dir, load_config

STAGE_NAMES = ("prepare", "features", "train", "evaluate")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewclip", description="Few-shot classifiers on a frozen CLIP.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="all stages; without CONFIG, the embedded offline default")
    run.add_argument("config", nargs="?", help="YAML config (omit for the embedded default)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. few_shot.shots=[8,16]")
    for stage in STAGE_NAMES:
        sub = commands.add_parser(stage, help=f"the {stage} stage only")
        sub.add_argument("config", help="YAML config, or 'default' for the embedded default")
        sub.add_argument("overrides", nargs="*")
    return parser


def _split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """``fewclip run few_shot.shots=[2]`` has no config file: the first word is an override."""
    if config is not None and "=" in config and not Path(config).is_file():
        return None, [config, *overrides]
    return (None if config == "default" else config), overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    from . import pipeline
    from .embedded import embedded_config

    config_path, overrides = _split_config_arg(args.config, list(args.overrides))
    if args.quiet:
        overrides.append("output.progress=false")
    try:
        base = embedded_config(Path(default_cache_dir())) if config_path is None else None
        config = load_config(config_path, overrides, base=base)
        ctx = pipeline.RunContext(config)
        stages = STAGE_NAMES if args.command == "run" else (args.command,)
        for stage in stages:
            start = time.perf_counter()
            pipeline.STAGES[stage](ctx)
            logging.info("%s done in %.1fs", stage, time.perf_counter() - start)
    except (ConfigError, FileNotFoundError, ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"fewclip: error: {message}", file=sys.stderr)
        return 2
    if args.command in ("run", "evaluate"):
        print(f"results: {ctx.layout.summary}")
        print(ctx.layout.summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
