"""Which methods run on which backbone library.

A method (a head, a captioning method) declares the capabilities it ``needs`` (names from
``protocol.CAPABILITIES``), each backbone class what it ``offers``. A method that needs what the chosen
``model.library`` does not offer is refused when the config is loaded, before any stage runs, with a
message that names the method, the library and what to choose instead; ``require`` repeats the check on a
loaded backbone for callers of the library (a ``Task`` built in a notebook).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from fewclip.backbones import BACKBONES
from fewclip.backbones.config import ModelConfig
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


def model_offers(config: ModelConfig) -> frozenset[str]:
    """What the model ``config`` names offers: its library's ``model_offers`` where the model's files say it without
    loading it, else what every backbone of the library offers."""
    library = BACKBONES.get(config.library)
    offers = library.model_offers(config)
    return library.offers if offers is None else offers


def capability_problem(
    method: str,
    needs: Iterable[str],
    library: str,
    offers: frozenset[str] | None = None,
    model: str | None = None,
    advice: Sequence[str] = (),
) -> str | None:
    """Why ``method`` cannot run on ``library`` (whose backbones offer ``offers``, by default the registered
    class's; ``model``: the one model they are of), or None when it can. ``advice``: other ways out, said
    before the other libraries."""
    needs = set(needs)
    missing = sorted(needs - (backbone_offers(library) if offers is None else offers))
    if not missing:
        return None
    what = " and ".join(missing)
    holder = f"the {library} backbone" if model is None else f"the {library} model {model!r}"
    choices = [f"use model.library={name}" for name in libraries_offering(needs) if name != library]
    return f"{method} needs {what}, which {holder} does not offer; " + " or ".join(
        [*advice, *choices, f"remove {method} from methods"]
    )


def require(method: str, needs: Iterable[str], backbone: Backbone) -> None:
    """Raise ``ValueError`` (``capability_problem``'s message) if ``backbone`` does not offer ``needs``."""
    problem = capability_problem(method, needs, backbone.config.library, backbone.offers)
    if problem:
        raise ValueError(problem)
