"""Every registered head that names an official repository has its official-equivalence test here.

``tests/reference/test_<name>.py`` re-implements the official computation independently (written from
reading the cited file, never copied) and compares the head with it on identical inputs and initial state.
A new head that declares ``official_code`` without such a file fails this suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fewclip.heads import HEADS, list_heads

HERE = Path(__file__).parent


def reference_tests(name: str) -> list[str]:
    """Names of the test functions in tests/reference/test_<name>.py (empty if there is no such file)."""
    file = HERE / f"test_{name}.py"
    if not file.is_file():
        return []
    tree = ast.parse(file.read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


@pytest.mark.parametrize("name", list_heads())
def test_every_head_that_names_its_code_has_an_equivalence_test(name: str) -> None:
    head = HEADS.get(name)
    if head.official_code is None:
        assert head.paper is None, f"{name} names a paper ({head.paper}) but no official code to test against"
        return
    tests = reference_tests(name)
    assert tests, (
        f"{name} follows {head.official_code}: add tests/reference/test_{name}.py, an independent "
        f"re-implementation of the official computation and a comparison with the head"
    )
    source = (HERE / f"test_{name}.py").read_text()
    assert head.official_code in source, f"tests/reference/test_{name}.py must cite {head.official_code}'s file"
