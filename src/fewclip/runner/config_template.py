"""A config as a commented YAML file to edit (``fewclip init FOLDER``): every block and key at its value, each
under a one-line comment taken from its description (``Field(description=...)``, the block class's docstring:
the same source as ``docs/configuration.md``), so that the file explains itself and loads as it is.

A key whose default depends on the machine (``cache.dir``: a home folder or ``$FEWCLIP_CACHE``) is written
commented out with the rule, so that the file reads the same wherever it is run.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any, Iterator, Mapping, Sequence

from pydantic import BaseModel

from fewclip.runner.config_reference import MACHINE_DEFAULTS, WIDTH, class_doc, module_doc, yaml_value

INDENT = "  "
SENTENCE_END = re.compile(r"(?<=\.)(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z`(])|(?<=;)\s+")
BRACKETS = (("(", ")"), ("[", "]"), ("{", "}"))


def first_sentence(text: str) -> str:
    """The first sentence of a description or docstring, on one line, without its final full stop or semicolon:
    it ends at a full stop before a capital, or a semicolon, outside brackets."""
    joined = " ".join(text.split())
    for end in SENTENCE_END.finditer(joined):
        head = joined[: end.start()]
        if all(head.count(opening) == head.count(closing) for opening, closing in BRACKETS):
            return head.rstrip(".;")
    return joined.rstrip(".;")


def block_lines(block: BaseModel, values: Mapping[str, Any], depth: int = 0) -> Iterator[str]:
    """Each key of ``block`` as ``key: value`` under its comment; a nested block as ``key:`` under its class's
    first sentence, its keys indented below. ``values``: the block as YAML data (its ``model_dump(mode="json")``)."""
    pad = INDENT * depth
    for name, field in type(block).model_fields.items():
        value = getattr(block, name)
        if depth == 0:
            yield ""
        if isinstance(value, BaseModel):
            about = first_sentence(class_doc(type(value)) or field.description or module_doc(type(value)))
            if about:
                yield f"{pad}# {about}"
            keys = list(block_lines(value, values[name], depth + 1))
            written = any(not line.lstrip().startswith("#") for line in keys)
            yield f"{pad}{name}:" if written else f"{pad}{name}: {{}}"  # every key commented out: still a block
            yield from keys
            continue
        if field.description:
            yield f"{pad}# {first_sentence(field.description)}"
        factory = field.default_factory
        if factory in MACHINE_DEFAULTS and value == factory():
            rule = MACHINE_DEFAULTS[factory]
            yield f"{pad}# {name}:   (default: {rule})"
            continue
        yield f"{pad}{name}: {yaml_value(values[name])}"


def commented_yaml(config: BaseModel, header: Sequence[str], replace: Mapping[str, Any] | None = None) -> str:
    """``config`` as a commented YAML file, ``header`` (lines) first as comments; ``replace``: dotted keys written
    with another value than the config holds (a path written relative to the file)."""
    values = config.model_dump(mode="json")
    for dotted, value in (replace or {}).items():
        *blocks, key = dotted.split(".")
        node = values
        for part in blocks:
            node = node[part]
        node[key] = value
    lines = [
        f"# {line}".rstrip() for text in header for line in (textwrap.wrap(text, WIDTH, subsequent_indent="  ") or [""])
    ]
    lines += list(block_lines(config, values))
    return "\n".join(lines) + "\n"
