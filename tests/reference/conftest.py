"""Fixtures the equivalence tests share: the reference text tower over the tiny CLIP's weights (the tiny CLIP as
fewclip loads it, ``backbone``, and the shapes' image sets, ``shapes``, are ``tests/conftest.py``'s)."""

from __future__ import annotations

from typing import Any

import pytest


from tests.reference.dassl_clip import ReferenceCLIPText


@pytest.fixture(scope="session")
def clip(backbone: Any) -> ReferenceCLIPText:
    return ReferenceCLIPText(backbone)
