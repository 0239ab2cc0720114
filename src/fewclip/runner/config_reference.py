"""The configuration reference, ``docs/configuration.md``, written from the config models themselves:

    python -m fewclip.runner.config_reference > docs/configuration.md

Every key's type, default and meaning come from its block's model (``Field(description=...)``, the block class's
docstring): one source, so the page cannot drift from the code. ``tests/test_docs.py`` fails when the checked-in
page differs from what this prints, or when a key has no description.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fewclip.runner.caption_config import CaptionConfig
from fewclip.data.sources import SOURCES, SourceConfig
from fewclip.heads import HEADS, list_heads
from fewclip.runner.config import Config, default_cache_dir

COMMAND = "python -m fewclip.runner.config_reference > docs/configuration.md"
REQUIRED = "required"
WIDTH = 110  # wrap prose here, so that the page reads in a terminal and diffs line by line

# Defaults that depend on the machine (a home folder, an environment variable) are written as the rule, not as
# this machine's value: the page must read the same wherever it is generated.
MACHINE_DEFAULTS: dict[Callable[[], Any], str] = {
    default_cache_dir: "~/.cache/fewclip, or $FEWCLIP_CACHE when set",
}
# Keys a caption config may not set (the validators refuse them: each unit's method and attention layer are
# filled in from `methods` and `attention.layer`); tests/test_docs.py checks that they are refused.
CAPTION_INTERNAL_KEYS = ("model.method", "model.attention_layer")

INTRO = """\
A run is configured by one YAML file plus dotted `key.sub=value` overrides on the command line
(`fewclip run configs/food101.yaml few_shot.shots=[8,16] coop.epochs=20`); the resolved config is written to
the run directory as `config.yaml`. A command without a config file starts from the embedded offline default
(`fewclip run`, `fewclip caption run`).

How a config is read:
- Unknown keys are an error naming the key and the nearest valid one; a wrong type or value names the key path
  and what is allowed. A count takes a whole number: `true` or `2.0` is refused, not read as 1 or 2.
- Config files and CSVs are UTF-8 (a BOM, as Excel writes, is fine). A key written twice in one YAML mapping
  is an error naming both lines, and aliases are bounded (a config that would expand past 100,000 values is
  refused).
- Relative paths written in a config file (`dataset.path`, the csv source's `train` / `test` / `root`, the
  same keys of `eval_on` targets, `model.id`, `model.pretrained`) are looked for beside the file, then in the
  working directory, and stored absolute in the run's `config.yaml`; given on the command line, they are
  relative to the working directory. `output.dir` and `cache.dir` are always relative to the working
  directory.
- A missing dataset file or folder (the error says where it looked) or a `cache.dir` that is a file fails
  before the run directory is created, and a first command that fails removes the run directory it created.
- A command whose config differs from its run directory's `config.yaml` in `model`, `dataset`, `prompts`,
  `few_shot` or `splits` is refused with the list of differing keys unless `--force`; `name`, `methods`,
  `variants`, the head blocks, `output`, `cache`, `wandb`, `runtime`, `dataset.duplicates` and the model's
  batch size, loader threads and device may change freely (a changed head block retrains that head only).

Each key below reads: the dotted key, its type and bounds, its default (or "required"), then what it does."""


# --- rendering one key -----------------------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML: ``int``, ``list[int]``, ``'fp32' | 'bf16'``, ``str or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        if members and all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
            return "dataset block" if all(issubclass(m, SourceConfig) for m in members) else "block"
        shown = " | ".join(type_name(member) for member in members)
        return f"{shown} or null" if len(members) < len(args) else shown
    if origin in (list, dict, tuple, set):
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, typing.ForwardRef) or isinstance(annotation, str):
        return "dataset block"  # SourceConfig.eval_on's forward reference to the DatasetConfig union
    if isinstance(annotation, type):
        return "block" if issubclass(annotation, BaseModel) else annotation.__name__
    return str(annotation)


def constraints(field: FieldInfo) -> str:
    """The bounds pydantic enforces on a field (``>= 1``, ``at least 1 item``), as words."""
    shown = []
    for item in field.metadata:
        for kind, attr, symbol in (
            (annotated_types.Ge, "ge", ">="),
            (annotated_types.Gt, "gt", ">"),
            (annotated_types.Le, "le", "<="),
            (annotated_types.Lt, "lt", "<"),
        ):
            if isinstance(item, kind):
                shown.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            shown.append(f"at least {item.min_length} item{'s' if item.min_length > 1 else ''}")
        if isinstance(item, annotated_types.MaxLen):
            shown.append(f"at most {item.max_length} items")
    return ", ".join(shown)


def yaml_value(value: Any) -> str:
    """A default as it would be written in a config file (flow style: ``[1, 2, 4]``, ``{1: 50}``, ``null``)."""
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


def default_text(model: type[BaseModel], name: str, field: FieldInfo, resolved: dict[str, Any] | None) -> str:
    """The default of ``model.name``: as a default-built block holds it (a prompt learner's ``n_ctx`` follows its
    ``ctx_init``), else the field's own default; ``required`` when there is none."""
    if field.is_required():
        return REQUIRED
    factory = field.default_factory
    if factory in MACHINE_DEFAULTS:
        return MACHINE_DEFAULTS[factory]  # type: ignore[index]
    if resolved is not None and name in resolved and not isinstance(resolved[name], BaseModel):
        return yaml_value(resolved[name])
    value = factory() if factory is not None else field.default  # type: ignore[call-arg]
    return "a block" if isinstance(value, BaseModel) else yaml_value(value)


def prose(text: str) -> str:
    """A docstring or description as Markdown: reST's ``double`` backticks become single ones, lines rejoined,
    and a word with a placeholder in angle brackets (`<output.dir>/wandb/`) set as code, which Markdown would
    otherwise read as an HTML tag and drop."""
    return " ".join(
        as_code(word) if PLACEHOLDER.search(word) and "`" not in word else word
        for word in text.replace("``", "`").split()
    )


PLACEHOLDER = re.compile(r"<[A-Za-z_.]+>")


def as_code(word: str) -> str:
    """``(<path>/<class>/*,`` -> ``(`<path>/<class>/*`,``: the punctuation around the word stays outside."""
    match = re.fullmatch(r"([(\[]*)(.*?)([,;:.)\]]*)", word)
    assert match is not None  # the pattern matches every string
    before, core, after = match.groups()
    return f"{before}`{core}`{after}"


def wrapped(text: str, first: str = "", rest: str = "") -> str:
    return textwrap.fill(
        text, WIDTH, initial_indent=first, subsequent_indent=rest, break_long_words=False, break_on_hyphens=False
    )


class UndescribedKey(ValueError):
    """A config key without ``Field(description=...)``: the reference would have a hole where it belongs."""


def key_line(dotted: str, model: type[BaseModel], name: str, field: FieldInfo, resolved: dict[str, Any] | None) -> str:
    if not field.description:
        raise UndescribedKey(
            f"config key `{dotted}` ({model.__module__}.{model.__qualname__}.{name}) has no "
            "description: give its Field a description=... saying what it does, then run "
            f"`{COMMAND}`"
        )
    kind = type_name(field.annotation)
    bounds = constraints(field)
    default = default_text(model, name, field, resolved)
    head = f"`{dotted}` ({kind}{', ' + bounds if bounds else ''}; " + (
        "required)" if default == REQUIRED else f"default `{default}`)"
    )
    return wrapped(f"{head}: {prose(field.description)}", "- ", "  ")


def class_doc(model: type) -> str:
    """A block class's own docstring (pydantic models without one inherit nothing here)."""
    return prose(inspect.cleandoc(vars(model).get("__doc__") or ""))


def block_class(annotation: Any) -> type[BaseModel] | None:
    """The block class a field holds (``None`` for a plain value or a union of blocks)."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def holds_blocks(annotation: Any) -> bool:
    """Whether a field is a block or a choice of blocks (the `dataset` union): it gets a section, not a line."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return holds_blocks(args[0])
    if origin in (typing.Union, types.UnionType):
        return all(holds_blocks(arg) for arg in args)
    return block_class(annotation) is not None


def module_doc(obj: type) -> str:
    """The first paragraph of the docstring of the module that defines ``obj``."""
    return prose((sys.modules[obj.__module__].__doc__ or "").strip().split("\n\n")[0])


def default_block(model: type[BaseModel]) -> dict[str, Any] | None:
    """A block built from its defaults, as a dict (None when some key is required)."""
    try:
        return dict(model())
    except Exception:  # noqa: BLE001 -- a block with required keys (a data source) has no default instance
        return None


def key_lines(
    model: type[BaseModel], prefix: str, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None
) -> Iterator[str]:
    """One bullet per plain key of ``model`` (nested blocks get their own section)."""
    resolved = default_block(model)
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if name in skip or dotted in skip or (only is not None and name not in only):
            continue
        if holds_blocks(field.annotation):
            continue
        yield key_line(dotted, model, name, field, resolved)


def block_section(
    heading: str, model: type[BaseModel], prefix: str, intro: str = "", skip: tuple[str, ...] = ()
) -> Iterator[str]:
    yield f"{heading} `{prefix.rstrip('.')}`"
    yield ""
    text = " ".join(part for part in (intro, class_doc(model)) if part)
    if text:
        yield wrapped(text)
        yield ""
    yield from key_lines(model, prefix, skip=skip)
    yield ""


# --- the sections ----------------------------------------------------------------------------------------------


def dataset_section() -> Iterator[str]:
    """The `dataset` block: the keys every source shares, then each registered source's own."""
    yield "### `dataset`"
    yield ""
    yield wrapped(
        f"Where the images come from; `source` picks one of the registered data sources "
        f"({', '.join(f'`{s}`' for s in SOURCES.names())}) and with it the other keys. Keys every source "
        "takes:"
    )
    yield ""
    yield from key_lines(SourceConfig, "dataset.")
    yield ""
    for source in SOURCES.names():
        config_cls = SOURCES.get(source).Config
        yield f"#### `dataset.source: {source}`"
        yield ""
        yield wrapped(" ".join(part for part in (module_doc(config_cls), class_doc(config_cls)) if part))
        yield ""
        own = tuple(
            name for name in config_cls.model_fields if name not in SourceConfig.model_fields and name != "source"
        )
        yield from key_lines(config_cls, "dataset.", only=own)
        yield ""


def head_source(head_cls: type) -> str:
    """A link from docs/ to the file that defines the head."""
    path = "src/" + head_cls.__module__.replace(".", "/") + ".py"
    return f"[{path}](../{path})"


def head_group(head_cls: type) -> str:
    """What the head trains, from the docstring of its group's package (``heads/prompts/``, ...)."""
    package = head_cls.__module__.rpartition(".")[0]
    return f"`{package.rpartition('.')[2]}/`"


def head_sections() -> Iterator[str]:
    """The registered heads, then one section per head with a config block, in ``list_heads()`` order."""
    yield "### The heads' blocks"
    yield ""
    yield wrapped(
        "Each registered head with hyperparameters owns one top-level block, named by its `config_key` "
        "and defined beside its code; `methods` picks which heads run, and `variants` runs a head under "
        "another name with some of its keys changed (`coop@n4`). The heads are grouped by what they "
        "train:"
    )
    yield ""
    groups = dict.fromkeys(HEADS.get(name).__module__.rpartition(".")[0] for name in list_heads())
    for package in groups:
        yield wrapped(f"`{package.rpartition('.')[2]}/`: {prose(sys.modules[package].__doc__ or '')}", "- ", "  ")
    yield ""
    yield "| head | block | paper | group |"
    yield "|---|---|---|---|"
    for name in list_heads():
        head_cls = HEADS.get(name)
        block = f"`{head_cls.config_key}`" if head_cls.config_key else "none"
        yield f"| `{name}` | {block} | {head_cls.paper or 'fewclip'} | {head_group(head_cls)} |"
    yield ""
    for name in list_heads():
        head_cls = HEADS.get(name)
        if not head_cls.config_key:
            continue
        if head_cls.paper:
            code = head_cls.official_code
            intro = (
                f"Head `{name}`: {head_cls.paper}, as its official code [{code}](https://github.com/{code}) "
                f"computes it; {head_source(head_cls)} says where fewclip differs."
            )
        else:
            intro = f"Head `{name}`: fewclip's own ({head_source(head_cls)})."
        yield from block_section("####", head_cls.Config, f"{head_cls.config_key}.", intro=intro)


def top_level_keys(title: str, model: type[BaseModel], intro: str | None = None) -> Iterator[str]:
    """A run kind's section title, its introduction, and its top-level keys."""
    yield from (title, "")
    if intro is not None:
        yield from (intro, "")
    yield from ("### Top-level keys", "")
    yield from key_lines(model, "")
    yield ""


def run_config_sections() -> Iterator[str]:
    heads = {HEADS.get(name).config_key for name in list_heads()}
    yield from top_level_keys("## Classification runs (`fewclip run`)", Config)
    for name, field in Config.model_fields.items():
        if name in heads:
            continue
        if name == "dataset":
            yield from dataset_section()
        elif holds_blocks(field.annotation):
            yield from block_section("###", block_class(field.annotation), f"{name}.")  # type: ignore[arg-type]
        if name == "splits":  # the head blocks follow the run's data blocks, as in the model
            yield from head_sections()


def caption_config_sections() -> Iterator[str]:
    intro = wrapped(
        "A captioning run has its own config (`configs/coco_caption.yaml`; the embedded default is "
        "`fewclip caption run`). See [captioning.md](captioning.md) for what the methods train."
    )
    yield from top_level_keys("## Captioning runs (`fewclip caption run`)", CaptionConfig, intro)
    for name, field in CaptionConfig.model_fields.items():
        block = block_class(field.annotation)
        if block is not None:
            yield from block_section("###", block, f"{name}.", skip=CAPTION_INTERNAL_KEYS)


def render() -> str:
    """The whole page, as ``docs/configuration.md`` holds it."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the config models by\n     {COMMAND}\n     "
        "Edit the models' descriptions (Field(description=...)), not this page. -->",
        "",
        INTRO,
        "",
        *run_config_sections(),
        *caption_config_sections(),
    ]
    while lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
