"""Published reference numbers (``published.csv``, shipped with the package) and when a run may sit beside them.

Each row is one number a paper prints, with the paper, its table, the backbone, the protocol, the dataset (a
CoOp dataset name, or ``Average (11)`` for the mean over CoOp's 11 datasets), the method as the paper names
it, the shot budget (0 for zero-shot CLIP), the split (``test`` for the few-shot protocol; ``base``, ``new``
and ``hm`` for base-to-new) and the value in percent, how its hyper-parameters were chosen (``selection``, one of
``selection_protocol.PAPER_SELECTIONS``: the released code's protocol on that dataset), plus where the number was
checked. A number goes into the file only once it has been read in a source; see the file's ``verified_from``
column.

A run matches a paper's protocol when it reads the dataset in CoOp's layout (``dataset.source: coop``),
draws CoOp's few-shot sets (``splits.sampler: coop``) and uses the backbone the paper names; a cell then
matches a row with the same protocol, dataset, method and shot budget. Named variants (``coop@n4``) never
match: the paper's number is for the method as the paper configured it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

from fewclip.heads import HEADS, list_heads
from fewclip.heads.base import own_declaration
from fewclip.heads.selection_protocol import PAPER_SELECTIONS

PUBLISHED_FILE = "published.csv"


def paper_method(method: str) -> str | None:
    """The name the papers print for a registered head (its ``published_as``); None for a variant (``coop@n4``),
    an unknown name or a head the papers do not list."""
    return own_declaration(HEADS.get(method), "published_as") if method in list_heads() else None


# The paper's backbone name -> the (library, model id, pretrained tag) that load the same OpenAI weights
PAPER_BACKBONES: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "ViT-B/16": (
        ("hf", "openai/clip-vit-base-patch16", None),
        ("open_clip", "ViT-B-16", "openai"),
        ("open_clip", "ViT-B-16-quickgelu", "openai"),
    ),
    "ViT-B/32": (
        ("hf", "openai/clip-vit-base-patch32", None),
        ("open_clip", "ViT-B-32", "openai"),
        ("open_clip", "ViT-B-32-quickgelu", "openai"),
    ),
    "RN50": (("open_clip", "RN50", "openai"), ("open_clip", "RN50-quickgelu", "openai")),
    "RN101": (("open_clip", "RN101", "openai"), ("open_clip", "RN101-quickgelu", "openai")),
}


@dataclass(frozen=True)
class Reference:
    """One published number (percent) and its citation."""

    value: float
    paper: str
    table: str
    backbone: str
    selection: str  # how the number's hyper-parameters were chosen (selection_protocol.PAPER_SELECTIONS)

    @property
    def citation(self) -> str:
        return f"{self.paper}, {self.table}, {self.backbone}"


ReferenceKey = tuple[str, str, str, str, int, str]  # backbone, protocol, dataset, paper method, shots, split


def load_published(text: str | None = None) -> dict[ReferenceKey, Reference]:
    """The shipped reference numbers by (backbone, protocol, dataset, method, shots, split); ``text`` replaces
    the shipped file (tests)."""
    if text is None:
        text = resources.files("fewclip.report").joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    table: dict[ReferenceKey, Reference] = {}
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if row.get("selection") not in PAPER_SELECTIONS:
            raise ValueError(
                f"{PUBLISHED_FILE} line {line}: selection {row.get('selection')!r} is not one of "
                f"{', '.join(map(repr, PAPER_SELECTIONS))}; say how the number's hyper-parameters were chosen"
            )
        key = (row["backbone"], row["protocol"], row["dataset"], row["method"], int(row["shots"]), row["split"])
        table[key] = Reference(float(row["value"]), row["paper"], row["table"], row["backbone"], row["selection"])
    return table


def paper_backbone(model: Mapping[str, Any]) -> str | None:
    """The paper's name for a run's ``model`` block (``ViT-B/16``), or None when no paper used it."""
    library, model_id = model.get("library", "hf"), model.get("id")
    pretrained = model.get("pretrained") if library == "open_clip" else None
    for name, loaders in PAPER_BACKBONES.items():
        if (library, model_id, pretrained) in loaders:
            return name
    return None


def paper_protocol(config: Mapping[str, Any]) -> bool:
    """True when a run reads CoOp's layout and draws CoOp's few-shot sets (what the papers ran on)."""
    return config.get("dataset", {}).get("source") == "coop" and config.get("splits", {}).get("sampler") == "coop"
