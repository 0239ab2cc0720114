"""Every README snippet runs: the ```python blocks execute (in order, in one namespace, as in a notebook),
the ```yaml blocks load as config, and every ``fewclip ...`` line of the ```bash blocks parses with the
CLI's parser and its config + overrides validate.

The README names a hub model, a hub dataset config, a run folder and the reader's own images; the test
swaps them for local stand-ins through the explicit tables below (a README change that drops one of
these strings fails the test, so the tables stay in sync).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from fewclip.runner import cli
from fewclip.runner.config import load_config
from fewclip.runner.demo import build_shapes_dataset, embedded_config

README = Path(__file__).resolve().parents[1] / "README.md"
REPO = README.parent
CLASSES = ["red_circle", "green_square", "blue_triangle"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", README.read_text(), flags=re.S | re.M)


@pytest.fixture()
def stand_ins(tiny_clip: Path, tmp_path: Path) -> dict[str, Any]:
    """What each README name becomes here (Python source text -> replacement), and the reader's inputs."""
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
    assert cli.main(["-q", "caption", "run", "default", "methods=[adapter]", "data.world_images=40", "training.epochs=1",
                     f"output.dir={caption_run}", f"cache.dir={tmp_path / 'cache'}"]) == 0
    replace = {
        '"runs/caption-default"': repr(str(caption_run)),
        '"configs/food101.yaml"': repr(str(config_file)),  # a hub dataset -> the shapes folder, tiny CLIP
        '"openai/clip-vit-base-patch32"': repr(str(tiny_clip)),  # a hub model -> the tiny CLIP fixture
        '"runs/default"': repr(str(tmp_path / "run")),  # the run the first snippet made
        '"photo.jpg"': repr(str(images[0])),
        '"more_photos/"': repr(str(data / "test" / "green_square")),
    }
    given = {  # names the README leaves to the reader ("your images")
        "paths": [str(p) for p in images],
        "labels": [sorted(CLASSES).index(p.parent.name) for p in images],
        "class_names": sorted(CLASSES),
    }
    return {"replace": replace, "given": given, "run_dir": tmp_path / "run"}


def test_python_snippets_run(stand_ins: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    sources = blocks("python")
    assert len(sources) >= 2
    text = "\n".join(sources)
    for original in stand_ins["replace"]:
        assert original in text, f"README.md no longer contains {original}: update the table in {__file__}"
    namespace: dict[str, Any] = dict(stand_ins["given"])
    for index, source in enumerate(sources):
        for original, replacement in stand_ins["replace"].items():
            source = source.replace(original, replacement)
        exec(compile(source, f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102

    assert (stand_ins["run_dir"] / "heads" / "coop" / "shot_16-seed_1.json").is_file()  # fewclip.run(config)
    features = namespace["features"]
    assert tuple(features.shape) == (len(stand_ins["given"]["paths"]), 32)  # the tiny CLIP projects to 32
    assert tuple(namespace["head"].weight_.shape) == (len(CLASSES), 32)  # LinearProbeHead().fit(...)
    assert namespace["classifier"].unit == "coop/shot_16-seed_1"  # load_classifier(..., method="coop", shots=16)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("tensor(")  # head.predict(features[:3])
    predicted = [line for line in printed[1:] if line.startswith(str(stand_ins["replace"]['"photo.jpg"']).strip("'"))]
    assert len(predicted) == 1 and "[(" in predicted[0]  # path, then its top-3 (label, probability) pairs
    captioned = [line for line in printed if "caption_summary.csv" in line]  # captioner.why, then the caption
    assert len(captioned) == 1 and captioned[0].rstrip().endswith("]") and namespace["captioner"] is not None


def test_yaml_snippets_load_as_config() -> None:
    sources = blocks("yaml")
    assert sources
    for source in sources:
        load_config(None, [], base=yaml.safe_load(source))


# Placeholders in the command lines -> a concrete value each (or several: every stage), explicitly.
PLACEHOLDERS = {"CONFIG": ["configs/food101.yaml"], "[overrides]": [], "...": [], "RUN_DIR": ["runs/default"],
                "IMAGES...": ["photo.jpg"], "[CONFIG|RUN_DIR|default]": ["configs/food101.yaml"], "[--force]": ["--force"],
                "[key=value": [], "...]": []}
RUN_DIRS = ("runs/default", "runs/caption-default")  # stand for their config.yaml (a run made elsewhere): parsed, not loaded
ALTERNATIVES = ("prepare|features|train|evaluate|report", "prepare|encode|train|evaluate|report")  # one command each


def fewclip_commands() -> list[list[str]]:
    """Every ``fewclip ...`` command of the bash blocks as argv (also ``torchrun ... -m fewclip ...``, lines
    continued with a backslash joined), placeholders filled in."""
    commands = []
    for source in blocks("bash"):
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
                    assert segment[start - 1] == "-m", f"README: torchrun must start `-m fewclip`: {line}"
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


def test_bash_fewclip_lines_parse_and_their_configs_validate(tmp_path: Path) -> None:
    commands = fewclip_commands()
    assert ["run"] in commands and ["predict", "runs/default", "photo.jpg", "more_photos/"] in commands
    assert len(commands) >= 10
    parser = cli._parser()  # noqa: SLF001 -- the CLI's own parser, so the README is checked against it
    for argv in commands:
        if argv == ["--version"]:
            continue  # argparse prints the version and exits; tested in tests/test_cli.py
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: fewclip {' '.join(argv)}")
        if args.command == "caption" and args.caption_command != "predict" and args.config not in RUN_DIRS:
            from fewclip.runner.caption_config import load_caption_config
            from fewclip.runner.captioning import embedded_caption_config

            config = None if args.config in (None, "default") else str(REPO / args.config)
            base = embedded_caption_config(tmp_path / "cache") if config is None else None
            load_caption_config(config, args.overrides, base=base)  # raises ConfigError on a bad key or value
        if args.command in ("run", *cli.STAGE_NAMES) and args.config not in RUN_DIRS:
            config = None if args.config is None or "=" in args.config else str(REPO / args.config)
            overrides = [w for w in [args.config, *args.overrides] if w and "=" in w]
            base = embedded_config(tmp_path / "cache") if config is None else None
            load_config(config, overrides, base=base)  # raises ConfigError on a bad key or value
