"""Every snippet of the README and of docs/*.md runs: the ```python blocks execute (in order, one namespace per
file, as in a notebook), the ```yaml blocks load as config, and every ``fewclip ...`` line of the ```bash blocks
parses with the CLI's parser and its config + overrides validate.

The pages name a hub model, a hub dataset config, run folders and the reader's own images; the test swaps them
for local stand-ins through the explicit tables below (a page change that drops one of these strings fails the
test, so the tables stay in sync). The README's python block runs first: it makes the run that the docs'
snippets read (``runs/default``).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from fewclip.caption.tiny import toy_caption_images
from fewclip.fileio import write_csv
from fewclip.runner.caption_config import load_caption_config
from fewclip.runner.caption_folder import caption_folder_config
from fewclip.runner.captioning import embedded_caption_config
from fewclip.runner import cli
from fewclip.runner.config import load_config
from fewclip.runner.demo import embedded_config
from fewclip.runner.folder_config import folder_config
from fewclip.world.toy import build_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]  # the README first: its run is the docs' run
CLASSES = ["red_circle", "green_square", "blue_triangle"]


def name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def pages_with(language: str) -> list[Any]:
    return [pytest.param(page, id=name(page)) for page in PAGES if blocks(page, language)]


# Python source text in the pages -> what it names here (filled in by the stand_ins fixture).
STAND_INS = (
    '"runs/caption-default"',
    '"configs/food101.yaml"',
    '"openai/clip-vit-base-patch32"',
    '"runs/default"',
    '"photo.jpg"',
    '"more_photos/"',
)


@pytest.fixture(scope="module")
def stand_ins(tiny_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each page's name becomes here (Python source text -> replacement), and the reader's inputs."""
    tmp_path = tmp_path_factory.mktemp("snippets")
    data = build_shapes_dataset(tmp_path / "shapes", CLASSES, 20, 4, seed=0)  # 16 shots + 4 val per class
    config = {
        "methods": ["zero_shot", "linear_probe", "coop"],
        "model": {"id": str(tiny_clip), "batch_size": 32},
        "dataset": {"source": "folder", "path": str(data)},
        "splits": {"seeds": [1]},
        "coop": {"n_ctx": 4, "epochs": 2},
        "output": {"dir": str(tmp_path / "run"), "progress": False},
        "cache": {"dir": str(tmp_path / "cache")},
    }
    config_file = tmp_path / "food101-stand-in.yaml"
    config_file.write_text(yaml.safe_dump(config))
    images = sorted((data / "test").rglob("*.png"))
    caption_run = tmp_path / "caption-run"  # a small caption run for the captioning snippet
    assert (
        cli.main(
            [
                "-q",
                "caption",
                "run",
                "default",
                "methods=[adapter]",
                "data.world_images=40",
                "training.epochs=1",
                f"output.dir={caption_run}",
                f"cache.dir={tmp_path / 'cache'}",
            ]
        )
        == 0
    )
    replace = {
        '"runs/caption-default"': repr(str(caption_run)),
        '"configs/food101.yaml"': repr(str(config_file)),  # a hub dataset -> the shapes folder, tiny CLIP
        '"openai/clip-vit-base-patch32"': repr(str(tiny_clip)),  # a hub model -> the tiny CLIP fixture
        '"runs/default"': repr(str(tmp_path / "run")),  # the run the README's snippet made
        '"photo.jpg"': repr(str(images[0])),
        '"more_photos/"': repr(str(data / "test" / "green_square")),
    }
    assert set(replace) == set(STAND_INS)
    given = {  # names the pages leave to the reader ("your images")
        "paths": [str(p) for p in images],
        "labels": [sorted(CLASSES).index(p.parent.name) for p in images],
        "class_names": sorted(CLASSES),
    }
    return {"replace": replace, "given": given, "run_dir": tmp_path / "run"}


def run_python(page: Path, stand_ins: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Execute a page's python blocks in order in one namespace; return it and the lines they printed."""
    namespace: dict[str, Any] = dict(stand_ins["given"])
    printed = io.StringIO()
    for index, source in enumerate(blocks(page, "python")):
        for original, replacement in stand_ins["replace"].items():
            source = source.replace(original, replacement)
        with contextlib.redirect_stdout(printed):
            exec(compile(source, f"{name(page)} python block {index + 1}", "exec"), namespace)  # noqa: S102
    return namespace, printed.getvalue().splitlines()


@pytest.fixture(scope="module")
def readme_python(stand_ins: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The README's snippet, run once: it makes the run the docs' snippets read."""
    return run_python(README, stand_ins)


def predicted_lines(printed: list[str], stand_ins: dict[str, Any]) -> list[str]:
    photo = str(stand_ins["replace"]['"photo.jpg"']).strip("'")
    return [line for line in printed if line.startswith(photo)]


def check_readme(namespace: dict[str, Any], printed: list[str], stand_ins: dict[str, Any]) -> None:
    assert (stand_ins["run_dir"] / "heads" / "coop" / "shot_16-seed_1.json").is_file()  # fewclip.run(config)
    assert namespace["classifier"].unit.split("/")[0] in ("zero_shot", "linear_probe", "coop")  # recommended
    predicted = predicted_lines(printed, stand_ins)
    assert len(predicted) == 1 and "[(" in predicted[0]  # path, then its top-3 (label, probability) pairs


def check_commands(namespace: dict[str, Any], printed: list[str], stand_ins: dict[str, Any]) -> None:
    features = namespace["features"]
    assert tuple(features.shape) == (len(stand_ins["given"]["paths"]), 32)  # the tiny CLIP projects to 32
    assert tuple(namespace["head"].weight_.shape) == (len(CLASSES), 32)  # LinearProbeHead().fit(...)
    assert namespace["classifier"].unit == "coop/shot_16-seed_1"  # load_classifier(..., method="coop", shots=16)
    assert printed[0].startswith("tensor(")  # head.predict(features[:3])
    predicted = predicted_lines(printed, stand_ins)
    assert len(predicted) == 1 and "[(" in predicted[0]  # path, then its top-3 (label, probability) pairs


def check_captioning(namespace: dict[str, Any], printed: list[str], stand_ins: dict[str, Any]) -> None:
    captioned = [line for line in printed if "caption_summary.csv" in line]  # captioner.why, then the caption
    assert len(captioned) == 1 and captioned[0].rstrip().endswith("]") and namespace["captioner"] is not None


# What each page's snippets must have done, beyond running (a page with python blocks and no entry here only
# has to run them without error).
CHECKS: dict[str, Callable[[dict[str, Any], list[str], dict[str, Any]], None]] = {
    "README.md": check_readme,
    "docs/commands.md": check_commands,
    "docs/captioning.md": check_captioning,
}


def test_the_checked_pages_have_their_snippets_and_the_stand_ins_are_used() -> None:
    assert len(blocks(README, "python")) >= 1
    assert sum(len(blocks(page, "python")) for page in PAGES) >= 2
    for page in CHECKS:
        assert blocks(REPO / page, "python"), f"{page} has no python block any more: update CHECKS in {__file__}"
    text = "\n".join(source for page in PAGES for source in blocks(page, "python"))
    for original in STAND_INS:
        assert original in text, f"no page contains {original} any more: update STAND_INS in {__file__}"


@pytest.mark.parametrize("page", pages_with("python"))
def test_python_snippets_run(
    page: Path, stand_ins: dict[str, Any], readme_python: tuple[dict[str, Any], list[str]]
) -> None:
    namespace, printed = readme_python if page == README else run_python(page, stand_ins)
    check = CHECKS.get(name(page))
    if check is not None:
        check(namespace, printed, stand_ins)


@pytest.mark.parametrize("page", pages_with("yaml"))
def test_yaml_snippets_load_as_config(page: Path) -> None:
    for source in blocks(page, "yaml"):
        load_config(None, [], base=yaml.safe_load(source))


# Placeholders in the command lines -> a concrete value each (or several: every stage), explicitly.
PLACEHOLDERS = {
    "CONFIG": ["configs/food101.yaml"],
    "[overrides]": [],
    "...": [],
    "RUN_DIR": ["runs/default"],
    "IMAGES...": ["photo.jpg"],
    "[CONFIG|RUN_DIR|default]": ["configs/food101.yaml"],
    "[--force]": ["--force"],
    "[key=value": [],
    "...]": [],
}
RUN_DIRS = (
    "runs/default",
    "runs/caption-default",
    "my_photos.yaml",  # the file `fewclip init my_photos/` writes
)  # stand for their config.yaml (a run made elsewhere): parsed, not loaded
IMAGE_FOLDERS = ("my_photos/",)  # the reader's images: a shapes folder stands in, and its config is built
CAPTION_FOLDERS = ("my_captions/",)  # the reader's captioned images: toy images + captions.csv stand in
ALTERNATIVES = ("prepare|features|train|evaluate|report", "prepare|encode|train|evaluate|report")  # one command each


def fewclip_commands(page: Path) -> list[list[str]]:
    """Every ``fewclip ...`` command of a page's bash blocks as argv (also ``torchrun ... -m fewclip ...``, lines
    continued with a backslash joined), placeholders filled in."""
    commands = []
    for source in blocks(page, "bash"):
        for line in source.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            segments, current = [], []
            for word in words + ["&&"]:
                if word == "&&":
                    segments.append(current)
                    current = []
                else:
                    current.append(word)
            for segment in segments:
                if segment[:1] == ["torchrun"] and "fewclip" in segment:  # torchrun [options] -m fewclip ARGS
                    start = segment.index("fewclip")
                    assert segment[start - 1] == "-m", f"{name(page)}: torchrun must start `-m fewclip`: {line}"
                    segment = segment[start:]
                if not segment or Path(segment[0]).name != "fewclip":
                    continue
                argv = [value for word in segment[1:] for value in PLACEHOLDERS.get(word, [word])]
                if argv[:1] == ["caption"]:  # captioning commands take captioning configs
                    argv = [w if w != "configs/food101.yaml" else "default" for w in argv]
                choice = next((a for a in ALTERNATIVES if a in argv), None)
                if choice:
                    commands += [[stage if w == choice else w for w in argv] for stage in choice.split("|")]
                else:
                    commands.append(argv)
    return commands


def test_the_readme_shows_the_main_commands() -> None:
    commands = fewclip_commands(README)
    assert ["run"] in commands and ["predict", "runs/default", "photo.jpg", "more_photos/"] in commands
    assert len(commands) >= 10


@pytest.mark.parametrize("page", pages_with("bash"))
def test_bash_fewclip_lines_parse_and_their_configs_validate(page: Path, tmp_path: Path) -> None:
    parser = cli._parser()  # noqa: SLF001 -- the CLI's own parser, so the pages are checked against it
    for argv in fewclip_commands(page):
        if argv == ["--version"]:
            continue  # argparse prints the version and exits; tested in tests/test_cli.py
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name(page)}: command does not parse: fewclip {' '.join(argv)}")
        if args.command == "caption" and getattr(args, "config", None) in CAPTION_FOLDERS:
            folder = tmp_path / args.config
            if not folder.is_dir():
                pairs = toy_caption_images(folder, per_colour=1)
                write_csv(folder / "captions.csv", ("path", "caption"), [(p.name, c) for p, c in pairs])
            base = caption_folder_config(folder, args.overrides, tmp_path / "cache")
            load_caption_config(None, args.overrides, base=base)
        elif args.command == "caption" and args.caption_command != "predict" and args.config not in RUN_DIRS:
            config = None if args.config in (None, "default") else str(REPO / args.config)
            base = embedded_caption_config(tmp_path / "cache") if config is None else None
            load_caption_config(config, args.overrides, base=base)  # raises ConfigError on a bad key or value
        images = args.folder if args.command == "init" else getattr(args, "config", None)
        if args.command in ("run", "init", *cli.STAGE_NAMES) and images in IMAGE_FOLDERS:
            folder = tmp_path / images
            if not folder.is_dir():
                build_shapes_dataset(folder, CLASSES, 8, 2, seed=0)
            load_config(None, args.overrides, base=folder_config(folder, args.overrides, tmp_path / "cache"))
        elif args.command in ("run", *cli.STAGE_NAMES) and args.config not in RUN_DIRS:
            config = None if args.config is None or "=" in args.config else str(REPO / args.config)
            overrides = [w for w in [args.config, *args.overrides] if w and "=" in w]
            base = embedded_config(tmp_path / "cache") if config is None else None
            load_config(config, overrides, base=base)  # raises ConfigError on a bad key or value
