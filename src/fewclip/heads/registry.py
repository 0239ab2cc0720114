"""The head registry (``HEADS``, ``list_heads()``) and ``@register_head``, put above each head's class.

A head is one file (timm's ``@register_model``): the decorator holds the class to the contract
(``contract.contract_problems``) as it registers it, so a head whose flags and code disagree is refused at import,
before any run. The package's ``__init__`` imports every head module, which fills the registry in import order.
"""

from __future__ import annotations

from typing import TypeVar

from fewclip.registry import Registry
from fewclip.heads.contract import contract_problems

HEADS: Registry[type] = Registry("head")

HeadClass = TypeVar("HeadClass", bound=type)


class HeadContractError(TypeError):
    """A head class that breaks the contract: ``problems`` lists what it gets wrong."""

    def __init__(self, head_cls: type, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{head_cls.__module__}.{head_cls.__qualname__} is not registered: it breaks the head "
                         f"contract (fewclip.heads.contract):\n{listed}")


def register_head(head_cls: HeadClass) -> HeadClass:
    """Class decorator: check ``head_cls`` against the contract and add it to ``HEADS`` under its ``name``."""
    if problems := contract_problems(head_cls):
        raise HeadContractError(head_cls, problems)
    HEADS.register(head_cls.name, head_cls)
    return head_cls


def list_heads() -> list[str]:
    return HEADS.names()
