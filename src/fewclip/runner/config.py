"""The run config: one YAML with typed, validated blocks and dotted ``key=value`` overrides.

Blocks: model, dataset, prompts, few_shot, splits, one block per registered head (``linear_probe``, ``coop``,
``cocoop``, ...: each head's ``Config`` under its ``config_key``, defined beside its code and added here from
the head registry), wandb, output, cache, runtime, variants, plus ``methods`` (which registered heads run).
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import re
import string
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from fewclip.backbones.capabilities import capability_problem, model_offers
from fewclip.backbones.config import ModelConfig
from fewclip.backbones.model_source import config_relative_id
from fewclip.runner.config_yaml import ConfigFileError, read_yaml_file
from fewclip.configbase import NUMBER_ERROR, ConfigBlock
from fewclip.data.dassl_fewshot import coop_sampler_problem
from fewclip.data.sources import SOURCES, dataset_config
from fewclip.data.splits import Sampler
from fewclip.data.subsample import Subsample
from fewclip.heads import HEADS, list_heads
from fewclip.registry import unknown_name_message

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = [
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a good photo of the {}.",
    "an image of a {}.",
]


class ConfigError(ValueError):
    """A config that does not validate; the message names each bad key and what is allowed."""


class PromptsConfig(ConfigBlock):
    """The `prompts` block: the hand-written prompts zero-shot (and the heads that start from it) encode."""

    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        min_length=1,
        description="Zero-shot templates, each with exactly one '{}' where the class name goes and no other field "
        "(a literal brace: '{{' or '}}'). A prompt longer than the model's text positions (77 for OpenAI CLIP, 32 "
        "for the world CLIP) is an error naming template, class and token count, never truncated.",
    )

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        for template in templates:
            template_problem(template)
        return templates


def template_problem(template: str) -> None:
    """Fail unless ``template.format(name)`` works and puts the name in exactly one place: one bare ``{}``
    and no other fields (``{other}``, ``{0}``) or unpaired braces (write a literal brace as ``{{`` / ``}}``)."""
    advice = "use one '{}' where the class name goes; write a literal brace as '{{' or '}}'"
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as err:  # a lone '{' or '}'
        raise ValueError(f"template {template!r}: {err}; {advice}") from None
    others = [f"{{{name}}}" for name, _, _ in fields if name != ""]
    if others:
        raise ValueError(f"template {template!r} has the field(s) {', '.join(others)}, which no value fills; {advice}")
    if len(fields) != 1:
        raise ValueError(
            f"template {template!r} must contain '{{}}' exactly once (where the class name goes), found {len(fields)}"
        )
    _, spec, conversion = fields[0]
    if spec or conversion:
        raise ValueError(f"template {template!r}: the class slot takes no format spec or conversion; {advice}")


class FewShotConfig(ConfigBlock):
    """The `few_shot` block: the shot budgets, each a separate experiment."""

    shots: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16],
        min_length=1,
        description="Support images per class, one experiment per value.",
    )
    allow_fewer: bool = Field(False, description="Cap classes that have fewer images instead of failing.")

    @field_validator("shots")
    @classmethod
    def _positive_sorted(cls, shots: list[int]) -> list[int]:
        if any(k < 1 for k in shots):
            raise ValueError(f"shots must be >= 1, got {shots}")
        return sorted(set(shots))


class SplitsConfig(ConfigBlock):
    """The `splits` block: how the few-shot train and validation sets are drawn, and which classes train."""

    val_per_class: int = Field(
        4,
        ge=0,
        description="Validation images per class, for epoch selection and "
        "temperature scaling only (below 10, select: auto keeps the last epoch).",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [1, 2, 3],
        min_length=1,
        description="One split (and one training run per method and budget) per seed; distinct.",
    )
    subsample: Subsample = Field(
        "all", description="all | base | new classes, or base2new: train on base, evaluate on base and new."
    )
    sampler: Sampler = Field(
        "fewclip",
        description="fewclip: content-hashed, nested across shots; coop: the sets "
        "CoOp/CoCoOp/MaPLe drew for each seed from the split file, as Dassl draws them (needs "
        "dataset.source: coop, all classes, no max_train_per_class): a fresh draw per budget, "
        "so not nested, a class with fewer images taken whole; val: min(shots, val_per_class) "
        "per class from the dataset's val split.",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return distinct_seeds(seeds, "each seed is one split, ")


def distinct_seeds(seeds: list[int], why: str = "") -> list[int]:
    """``seeds`` when none repeats; a ValueError naming the repeated ones otherwise (``why``: what a seed stands for,
    said before "list distinct seeds")."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed(s) {repeated} listed more than once; {why}list distinct seeds")
    return seeds


class WandbConfig(ConfigBlock):
    """The `wandb` block: Weights & Biases tracking (`pip install 'fewclip[wandb]'`)."""

    mode: Literal["disabled", "offline", "online"] = Field(
        "disabled",
        description="disabled (wandb is never imported), offline (the run is written under "
        "<output.dir>/wandb/, to upload later with `wandb sync`) or online (logged to project / entity; a server "
        "that does not answer within 5 s fails the command before it touches the run directory).",
    )
    project: str = Field("fewclip", description="The W&B project the run is logged to.")
    entity: str | None = Field(None, description="The W&B user or team (null: your default entity).")
    tags: list[str] = Field(default_factory=list, description="Tags on the W&B run.")


class OutputConfig(ConfigBlock):
    """The `output` block: where the run is written and what it draws."""

    dir: str = Field(
        "runs/default",
        description="Run directory: data, splits, heads, results (a new or empty "
        "folder, or this config's run directory; never inside the dataset folder).",
    )
    progress: bool = Field(True, description="Progress bars; false for quiet runs (CI, scripts).")
    figures: bool = Field(True, description="Write PNG figures (confusion, reliability, saliency, plots).")
    saliency_images: int = Field(6, ge=0, description="Test images with saliency overlays, per method (0: none).")

    @field_validator("dir")
    @classmethod
    def _dir_named(cls, folder: str) -> str:
        if not folder.strip():
            raise ValueError(
                "empty; name the run directory (e.g. output.dir=runs/my-run), "
                "an empty value would write the run into the working directory"
            )
        return folder


def default_cache_dir() -> str:
    return os.environ.get("FEWCLIP_CACHE", str(Path("~/.cache/fewclip").expanduser()))


class CacheConfig(ConfigBlock):
    """The `cache` block: the content-addressed cache that runs share."""

    dir: str = Field(default_factory=default_cache_dir, description="Shared feature cache (env FEWCLIP_CACHE).")


class RuntimeConfig(ConfigBlock):
    """The `runtime` block: how much of the machine a command uses."""

    threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op CPU threads; null: env FEWCLIP_THREADS, else the cores available to the process "
        "(affinity, cgroup quota), whatever the load: the count changes results in float rounding, so one machine "
        "repeats a run to the bit. On a busy machine fewer may run faster (the log says so).",
    )


class ConfigRules(ConfigBlock):
    """The run-level checks and helpers of ``Config`` (whose fields are assembled below)."""

    @model_validator(mode="before")
    @classmethod
    def _deprecated_blocks(cls, data: Any) -> Any:
        return rename_deprecated_blocks(data, "config")[0] if isinstance(data, dict) else data

    @field_validator("splits", check_fields=False)
    @classmethod
    def _sampler_fits_dataset(cls, splits: Any, info: ValidationInfo) -> Any:
        dataset = info.data.get("dataset")
        if splits.sampler == "coop" and dataset is not None:
            problem = coop_sampler_problem(dataset)
            if problem:
                raise ValueError(problem)
        return splits

    @field_validator("methods", check_fields=False)
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            base, label = split_variant(method)
            if label is not None and not VARIANT_LABEL.fullmatch(label):
                raise ValueError(
                    f"method {method!r}: a variant is named <head>@<label>, the label made of letters, "
                    "digits, '_' or '-' (e.g. coop@n4)"
                )
            if base not in list_heads():
                raise ValueError(unknown_name_message("method", base, list_heads()))
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods listed twice: {methods}")
        return methods

    @field_validator("model", check_fields=False)
    @classmethod
    def _methods_run_on_the_library(cls, model: ModelConfig, info: ValidationInfo) -> ModelConfig:
        """A head that needs what the chosen library's backbones do not offer is refused here, before any stage
        runs (``methods`` is validated before ``model``; absent when it did not validate)."""
        problems = [
            capability_problem(method, HEADS.get(split_variant(method)[0]).needs, model.library)
            for method in info.data.get("methods", [])
        ]
        if any(problems):
            raise ValueError("; ".join(problem for problem in problems if problem))
        return model

    @model_validator(mode="after")
    def _methods_run_on_the_model(self) -> Any:
        """A head that needs, with its block's keys, what this very model does not offer (read from the model's
        config files where its library can, before anything loads): MaPLe's coupling on an OpenCLIP ResNet."""
        model: ModelConfig = getattr(self, "model")
        offers = model_offers(model)
        problems = []
        for method in getattr(self, "methods"):
            head = HEADS.get(split_variant(method)[0])
            # HeadBase's needs_for; a class registered by hand (tests) may declare needs alone, or nothing
            needs_for = getattr(head, "needs_for", None)
            needs = needs_for(method_block(self, method)) if needs_for else getattr(head, "needs", frozenset())
            known = getattr(head, "needs_advice", {})
            advice = [known[need] for need in sorted(needs - offers) if need in known]
            problems.append(capability_problem(method, needs, model.library, offers, model.id, advice))
        if any(problems):
            raise ValueError("; ".join(problem for problem in problems if problem))
        return self

    @field_validator("methods", check_fields=False)
    @classmethod
    def _some_method(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError(f"empty; list at least one method to run (registered: {', '.join(list_heads())})")
        return methods

    @field_validator("variants", check_fields=False)
    @classmethod
    def _valid_variants(cls, variants: dict[str, dict[str, Any]], info: ValidationInfo) -> dict[str, dict[str, Any]]:
        for name, overrides in variants.items():
            base, label = split_variant(name)
            if label is None or base not in list_heads() or not VARIANT_LABEL.fullmatch(label):
                raise ValueError(
                    f"{name!r}: a variant is named <head>@<label> with a registered head "
                    f"({', '.join(list_heads())}) and a label of letters, digits, '_' or '-', e.g. coop@n4"
                )
            if not isinstance(overrides, dict):
                raise ValueError(f"{name}: expected a mapping of {base}'s keys to change, e.g. {{n_ctx: 4}}")
            try:
                block = base_block(info.data, base)
            except KeyError:
                continue  # the base block itself did not validate; that error is reported
            variant_block(block, name, overrides)  # its keys are checked now, not at training
        for method in info.data.get("methods", []):
            if split_variant(method)[1] is not None and method not in variants:
                base = split_variant(method)[0]
                raise ValueError(
                    f"methods lists {method!r} but variants has no block for it; add "
                    f"`variants: {{{method}: {{...}}}}` with the keys of `{base}` that differ"
                )
        return variants

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def method_block_fields() -> dict[str, Any]:
    """One top-level block per registered head with hyperparameters: its ``config_key`` -> its ``Config``.
    A new head gets its block by being registered in ``fewclip.heads``; nothing here names a method."""
    fields: dict[str, Any] = {}
    for name in list_heads():
        head_cls = HEADS.get(name)
        if head_cls.config_key is None:
            continue
        if head_cls.config_key in fields:
            raise ValueError(
                f"heads {fields[head_cls.config_key][2]!r} and {name!r} both claim the config block "
                f"{head_cls.config_key!r}; give each head its own config_key"
            )
        description = f"The {name} head's hyperparameters (variants: `{name}@<label>`)."
        fields[head_cls.config_key] = (
            head_cls.Config,
            Field(default_factory=head_cls.Config, description=description),
            name,
        )
    return {key: value[:2] for key, value in fields.items()}


def build_config_class() -> type[ConfigRules]:
    """The run config: the run-level blocks, then each registered head's block (``method_block_fields``)."""
    run_blocks: dict[str, Any] = dict(
        name=(str, Field("experiment", description="A label for the run.")),
        methods=(
            list[str],
            Field(
                default_factory=lambda: ["zero_shot", "linear_probe", "coop"],
                description="Registered heads to train and evaluate (the heads' blocks below), "
                "or named variants <head>@<label>; at least one, each once.",
            ),
        ),
        model=(ModelConfig, Field(default_factory=ModelConfig)),
        dataset=(dataset_config(), ...),  # one block per registered data source
        prompts=(PromptsConfig, Field(default_factory=PromptsConfig)),
        few_shot=(FewShotConfig, Field(default_factory=FewShotConfig)),
        splits=(SplitsConfig, Field(default_factory=SplitsConfig)),
    )
    tail_blocks: dict[str, Any] = dict(
        wandb=(WandbConfig, Field(default_factory=WandbConfig)),
        output=(OutputConfig, Field(default_factory=OutputConfig)),
        cache=(CacheConfig, Field(default_factory=CacheConfig)),
        runtime=(RuntimeConfig, Field(default_factory=RuntimeConfig)),
        # last: its validator reads the method blocks validated before it
        variants=(
            dict[str, dict[str, Any]],
            Field(
                default_factory=dict,
                validate_default=True,
                description="Named variants of a head, e.g. `coop@n4: {n_ctx: 4}`: the `coop` head with these keys of its "
                "block changed; list the name in methods beside (or instead of) `coop`.",
            ),
        ),
    )
    clash = set(method_block_fields()) & (set(run_blocks) | set(tail_blocks) | set(DEPRECATED_BLOCKS))
    if clash:
        raise ValueError(f"head config_key(s) {sorted(clash)} clash with run-level config blocks; rename them")
    return create_model(
        "Config",
        __base__=ConfigRules,
        __module__=__name__,
        __doc__="A run's config: one typed block per YAML key (see the README's config reference).",
        **run_blocks,
        **method_block_fields(),
        **tail_blocks,
    )


# --- deprecated block names ----------------------------------------------------------------------

DEPRECATED_BLOCKS = {"training": "linear_probe"}  # old top-level key -> the block it is now
_warned: set[str] = set()  # deprecated keys already warned about in this process


def warn_deprecated(old: str) -> None:
    if old not in _warned:
        _warned.add(old)
        log.warning("%s: is deprecated, use %s: (the same keys)", old, DEPRECATED_BLOCKS[old])


def rename_deprecated_blocks(data: dict[str, Any], origin: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with deprecated top-level blocks under their new names, and {new: old} for error messages."""
    renamed: dict[str, str] = {}
    for old, new in DEPRECATED_BLOCKS.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(
                f"{origin}: both `{old}:` and `{new}:` are given; `{old}` is the deprecated name of "
                f"`{new}`: merge its keys into `{new}:`"
            )
        warn_deprecated(old)
        data = {(new if key == old else key): value for key, value in data.items()}
        renamed[new] = old
    return data, renamed


# --- variants ------------------------------------------------------------------------------------

VARIANT_LABEL = re.compile(r"[A-Za-z0-9_-]+")


def split_variant(method: str) -> tuple[str, str | None]:
    """``coop@n4`` -> ('coop', 'n4'); a plain head name -> (name, None)."""
    base, _, label = method.partition("@")
    return base, (label if _ else None)


def base_block(blocks: Any, head: str) -> ConfigBlock:
    """The config block of a registered head, from a Config (or its validated fields while validating)."""
    head_cls = HEADS.get(head)
    if not head_cls.config_key:
        return head_cls.Config()
    return blocks[head_cls.config_key] if isinstance(blocks, dict) else getattr(blocks, head_cls.config_key)


def variant_block(base: ConfigBlock, name: str, overrides: dict[str, Any]) -> ConfigBlock:
    """``base`` with a variant's keys changed, validated like the block itself."""
    values = base.model_dump()
    for key, source in type(base).derived_keys.items():
        if source in overrides and key not in overrides:
            values.pop(key)  # it follows its source (coop's n_ctx follows ctx_init): let the block resolve it anew
    try:
        return type(base).model_validate({**values, **overrides})
    except ValidationError as err:
        valid = ", ".join(type(base).model_fields)
        problems = [
            ".".join([name, *map(str, e["loc"])])
            + ": "
            + ("unknown key" + f" (valid keys: {valid})" if e["type"] == "extra_forbidden" else _clean_message(e))
            for e in err.errors()
        ]
        raise ValueError("; ".join(problems)) from None


def method_block(config: "Config", method: str) -> ConfigBlock:
    """The config a method trains with: its head's block, with a variant's keys changed (``coop@n4``)."""
    base = base_block(config, split_variant(method)[0])
    return variant_block(base, method, config.variants[method]) if method in config.variants else base


Config = build_config_class()


# --- loading -------------------------------------------------------------------------------------


_SLOT = "FEWCLIP_CLASS_SLOT_e3b0c442"  # stands in for "{}" while an override value is parsed as YAML


def parse_override(text: str) -> tuple[list[str], Any]:
    """``few_shot.shots=[8,16]`` -> (['few_shot', 'shots'], [8, 16]); values parse as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: malformed key {key!r}")
    try:
        # "{}" is a template's class slot, never a YAML mapping: hide it from the parser, then put it back
        value = _restore_slots(yaml.safe_load(raw.replace("{}", _SLOT))) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and "{" in raw and ":" not in raw:
        value = raw  # "{}" in a template is text, not an empty mapping
    return key.split("."), value


def _restore_slots(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_SLOT, "{}")
    if isinstance(value, list):
        return [_restore_slots(v) for v in value]
    if isinstance(value, dict):
        return {_restore_slots(k): _restore_slots(v) for k, v in value.items()}
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], renames: bool = True) -> dict[str, Any]:
    """Dotted ``key=value`` overrides into ``data``; ``renames``: the run config's deprecated block names apply
    (false for other configs, e.g. captioning's own ``training`` block)."""
    for text in overrides:
        path, value = parse_override(text)
        if renames and path[0] in DEPRECATED_BLOCKS:  # training.epochs=5 sets linear_probe.epochs
            warn_deprecated(path[0])
            path = [DEPRECATED_BLOCKS[path[0]], *path[1:]]
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: depth + 1])} is a value, not a block")
            node = child
        node[path[-1]] = value
    return data


def _block_class(annotation: Any, tag: str | None = None) -> Any:
    """The config class behind a field annotation (resolving the dataset union by its source tag)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _block_class(typing.get_args(annotation)[0], tag)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        members = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        for member in members:
            if tag is not None and member.model_fields.get("source") and member.model_fields["source"].default == tag:
                return member
        return members[0] if len(members) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def describe_error(
    error: dict[str, Any],
    data: dict[str, Any],
    root: type[BaseModel] | None = None,
    renamed: dict[str, str] | None = None,
) -> str:
    """One pydantic error as a line for people: the dotted key as the user wrote it (``renamed``: {block:
    deprecated name}), and for an unknown key the nearest valid one among the keys of its block (``root``:
    the top-level config class, default ``Config``)."""
    loc = [str(p) for p in error["loc"]]
    if error["type"] == NUMBER_ERROR:
        loc.append(error["ctx"]["key"])  # raised by the block for one of its keys
    if loc and loc[0] == "dataset" and len(loc) > 1 and loc[1] in SOURCES:
        loc.pop(1)  # the union tag pydantic inserts
    if loc[:2] == ["dataset", "eval_on"] and len(loc) > 3 and loc[3] in SOURCES:
        loc.pop(3)  # the same, for a target (dataset.eval_on.<i>.<source>.key)
    block: Any = root or Config
    raw: Any = data
    for part in loc[:-1]:
        raw = raw.get(part, {}) if isinstance(raw, dict) else {}
        field = block.model_fields.get(part) if block else None
        block = _block_class(field.annotation, raw.get("source") if isinstance(raw, dict) else None) if field else None
    if loc and renamed and loc[0] in renamed:
        loc[0] = renamed[loc[0]]
    key = ".".join(loc) or "<root>"
    if error["type"] == "extra_forbidden" and block is not None:
        valid = list(block.model_fields)
        deprecated = len(loc) == 1 and root in (None, Config)
        spellings = {name: name for name in valid} | (
            {old: new for old, new in DEPRECATED_BLOCKS.items()} if deprecated else {}
        )
        close = difflib.get_close_matches(loc[-1], list(spellings), n=1, cutoff=0.5)
        parent = ".".join(loc[:-1])
        hint = f"; did you mean {'.'.join(loc[:-1] + [spellings[close[0]]])!r}?" if close else ""
        return f"{key}: unknown key{hint} (valid keys{' in ' + parent if parent else ''}: {', '.join(valid)})"
    if error["type"] == "union_tag_invalid":
        return (
            f"{key}.source: unknown data source {error['input'].get('source')!r}; valid: {', '.join(SOURCES.names())}"
        )
    if error["type"] == "union_tag_not_found":
        return f"{key}.source: missing; valid: {', '.join(SOURCES.names())}"
    return f"{key}: {_clean_message(error)}"


def _clean_message(error: dict[str, Any]) -> str:
    """pydantic's message without its "Value error, " prefix, plus the offending value unless the message
    (one of ours, from a validator) already names it."""
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    got = error.get("input")
    if isinstance(got, dict) or error["type"] in ("missing", "value_error", "assertion_error") or repr(got) in message:
        return message
    return f"{message} (got {got!r})"


def validate_config(data: dict[str, Any], origin: str = "config", renamed: dict[str, str] | None = None) -> Config:
    """``data`` as a Config; ``renamed`` ({block: deprecated name}) makes errors name keys as the user wrote them."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        lines = [describe_error(e, data, renamed=renamed) for e in err.errors()]
        raise ConfigError(f"{origin}: invalid config\n  " + "\n  ".join(lines)) from None


def resolve_dataset_paths(block: dict[str, Any], bases: Sequence[Path]) -> None:
    """Make absolute each relative file or folder a dataset block (and each of its eval_on targets) names, found
    under the first of ``bases`` that has it: a YAML's own folder, then the working directory (where configs run
    from their project root found them before). Absolute, the run's config.yaml reads the same from anywhere; a
    path found nowhere is kept as written, and the check before the run names the places looked in."""
    targets = block.get("eval_on")
    for values in [block, *(targets if isinstance(targets, list) else [])]:
        if not isinstance(values, dict) or values.get("source") not in SOURCES.names():
            continue  # validation reports it
        for key in SOURCES.get(values["source"]).Config.path_keys:
            value = values.get(key)
            if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
                continue
            found = next((base / value for base in bases if (base / value).exists()), None)
            if found is not None:
                values[key] = str(found.resolve())


def read_config_file(path: Path, what: str, blocks: str) -> dict[str, Any]:
    """The mapping of blocks a YAML config file holds (empty for an empty file); a ``ConfigError`` naming the file
    when it is missing, does not parse, or is not a mapping. ``what``: the file in messages ("config file"),
    ``blocks``: the blocks it should hold ("model:, dataset:, ...")."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = read_yaml_file(path)
    except ConfigFileError as err:
        raise ConfigError(str(err)) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of blocks ({blocks})")
    return loaded or {}


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None
) -> Config:
    """Read a YAML config (or start from ``base``), apply dotted overrides, validate."""
    data, renamed = rename_deprecated_blocks(
        copy.deepcopy(base or {}), "config"
    )  # overrides edit nested blocks; never the caller's
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        loaded = read_config_file(path, "config file", "model:, dataset:, ...")
        model = loaded.get("model")
        if isinstance(model, dict):
            for key in ("id", "pretrained"):  # a relative folder or file named in a YAML is read from its folder
                if isinstance(model.get(key), str):
                    model[key] = config_relative_id(model[key], path.parent)
        if isinstance(loaded.get("dataset"), dict):
            resolve_dataset_paths(loaded["dataset"], [path.parent, Path.cwd()])
        loaded, renamed_here = rename_deprecated_blocks(loaded, origin)
        renamed.update(renamed_here)
        data.update(loaded)
    data = apply_overrides(data, overrides)
    if isinstance(data.get("dataset"), dict):  # given on the command line (or in ``base``): the working directory
        resolve_dataset_paths(data["dataset"], [Path.cwd()])
    renamed.update(
        {new: old for old, new in DEPRECATED_BLOCKS.items() for text in overrides if text.startswith(old + ".")}
    )
    if "dataset" not in data:
        raise ConfigError(f"{origin}: no `dataset` block; add one (see the README's config reference)")
    return validate_config(data, origin, renamed)
