"""Which methods run on which backbone library.

A method (a head, a captioning method) declares the capabilities it ``needs`` (names from
``protocol.CAPABILITIES``), each backbone class what it ``offers``. A method that needs what the chosen
``model.library`` does not offer is refused when the config is loaded, before any stage runs, with a
message that names the method, the library and what to choose instead; ``require`` repeats the check on a
loaded backbone for callers of the library (a ``Task`` built in a notebook).
"""

from __future__ import annotations

from typing import Iterable

from fewclip.backbones import BACKBONES
from fewclip.backbones.protocol import CAPABILITIES, Backbone


def backbone_offers(library: str) -> frozenset[str]:
    """What ``library``'s backbones offer, known without loading a model."""
    return BACKBONES.get(library).offers


def libraries_offering(needs: Iterable[str]) -> list[str]:
    """The registered libraries whose backbones offer everything in ``needs``."""
    wanted = set(needs)
    return [name for name in BACKBONES.names() if wanted <= BACKBONES.get(name).offers]


def unknown_capabilities(needs: Iterable[str]) -> list[str]:
    """Names in ``needs`` that are not capabilities (a misspelt declaration)."""
    return sorted(set(needs) - set(CAPABILITIES))


def capability_problem(
    method: str, needs: Iterable[str], library: str, offers: frozenset[str] | None = None
) -> str | None:
    """Why ``method`` cannot run on ``library`` (whose backbones offer ``offers``, by default the registered
    class's), or None when it can."""
    needs = set(needs)
    missing = sorted(needs - (backbone_offers(library) if offers is None else offers))
    if not missing:
        return None
    what = " and ".join(missing)
    choices = [f"use model.library={name}" for name in libraries_offering(needs) if name != library]
    return f"{method} needs {what}, which the {library} backbone does not offer; " + " or ".join(
        [*choices, f"remove {method} from methods"]
    )


def require(method: str, needs: Iterable[str], backbone: Backbone) -> None:
    """Raise ``ValueError`` (``capability_problem``'s message) if ``backbone`` does not offer ``needs``."""
    problem = capability_problem(method, needs, backbone.config.library, backbone.offers)
    if problem:
        raise ValueError(problem)
