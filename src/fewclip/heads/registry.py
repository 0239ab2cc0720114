"""The head registry (``HEADS``, ``list_heads()``), ``@register_head``, put above each head's class, and
``load_head``, which rebuilds a saved head from the class registered under its name.

A head is one file (timm's ``@register_model``): the decorator holds the class to the contract
(``contract.contract_problems``) as it registers it, so a head whose flags and code disagree is refused at import,
before any run. The package's ``__init__`` imports every head module, which fills the registry in import order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, cast

from fewclip.registry import Registry
from fewclip.heads.artifacts import DamagedArtifact, StaleArtifact
from fewclip.heads.base import RETRAIN_ADVICE, Head, HeadBase, finite_head_tensors, head_files, read_head_meta
from fewclip.heads.contract import contract_problems

HEADS: Registry[type[HeadBase]] = Registry("head")

HeadClass = TypeVar("HeadClass", bound=type[HeadBase])


class HeadContractError(TypeError):
    """A head class that breaks the contract: ``problems`` lists what it gets wrong."""

    def __init__(self, head_cls: type, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"{head_cls.__module__}.{head_cls.__qualname__} is not registered: it breaks the head "
            f"contract (fewclip.heads.contract):\n{listed}"
        )


def register_head(head_cls: HeadClass) -> HeadClass:
    """Class decorator: check ``head_cls`` against the contract and add it to ``HEADS`` under its ``name``."""
    if problems := contract_problems(head_cls):
        raise HeadContractError(head_cls, problems)
    HEADS.register(head_cls.name, head_cls)
    return head_cls


def list_heads() -> list[str]:
    return HEADS.names()


def load_head(stem: Path) -> tuple[Head, dict[str, Any]]:
    """Rebuild a saved head (no backbone needed) and return it with its JSON metadata.

    Raises ``DamagedArtifact`` (a ValueError naming the file) if the JSON or the tensors are damaged.
    """
    meta = read_head_meta(stem)
    if meta is None:
        raise FileNotFoundError(f"{stem}.json does not exist: that head was not trained")
    head_cls = HEADS.get(meta["head"])
    # a registered class: register_head held it to the contract (contract.contract_problems)
    head = cast(Head, head_cls(head_cls.Config(**meta["config"])))
    tensors = finite_head_tensors(stem, meta)
    try:
        head.load_state(tensors, meta)
    except StaleArtifact as err:
        raise DamagedArtifact(head_files(stem)[1], "head file", f"out of date: {err}", RETRAIN_ADVICE) from None
    head.history_ = meta.get("history", [])
    return head, meta
