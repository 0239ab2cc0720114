"""Reading a config file: strict YAML whose errors name the file.

PyYAML's ``safe_load`` keeps the last of two equal keys (dropping a whole block without a word) and
expands aliases without limit (a 700-byte "billion laughs" file grew to gigabytes once validated). This
loader refuses both, and reads UTF-8 with or without a byte-order mark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_EXPANDED_NODES = 100_000  # a real config has a few hundred; aliases may share, not multiply, beyond this
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigFileError(ValueError):
    """A config file that cannot be read as YAML; the message names the file and what to fix."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping (naming the key and both lines)."""

    origin = "config"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # keys merged in with `<<` may be overridden on purpose
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise ConfigFileError(
                    f"{self.origin}: key {key_node.value!r} appears twice in one block (lines {seen[key_node.value]} "
                    f"and {line}); YAML would keep only the second: merge them into one"
                )
            seen[key_node.value] = line
        return super().construct_mapping(node, deep)


def expanded_size(node: yaml.Node, origin: str, limit: int = MAX_EXPANDED_NODES) -> int:
    """Nodes the document has once every alias is expanded (what validation would build); over ``limit``
    or recursive is an error. Computed on the shared node graph, so it never expands anything itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigFileError(
                f"{origin}: an alias refers to a block that contains it (line "
                f"{current.start_mark.line + 1}); a config cannot be recursive"
            )
        open_nodes.add(key)
        total = 1
        if isinstance(current, yaml.SequenceNode):
            total += sum(size(child) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in current.value)
        open_nodes.discard(key)
        sizes[key] = total
        if total > limit:
            raise ConfigFileError(
                f"{origin}: the YAML expands to more than {limit:,} values through aliases "
                f"(&anchor / *alias, at line {current.start_mark.line + 1}); "
                "a config needs far fewer: write the values out or use fewer aliases"
            )
        return total

    return size(node)


def load_yaml(text: str, origin: str) -> Any:
    """Parse one YAML document with no repeated keys and bounded alias expansion."""
    loader = _StrictLoader(text)
    loader.origin = origin
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node, origin)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigFileError(f"{origin}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path) -> Any:
    """A config file's YAML; a file that is not UTF-8 is named with the first bad byte and its offset."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigFileError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8 (most editors: 'Save with encoding')"
        ) from None
    return load_yaml(text, str(path))
