"""How a number's hyper-parameters were chosen: what each head's paper did and what fewclip did, in one small
vocabulary, so that every table can say it beside the number (issue 23: papers disagree on one baseline, and
some released code selects on the test set).

A head declares its paper's protocol (``paper_selection``, and ``paper_selection_except`` for the datasets
where the released code did otherwise, e.g. GDA and ProKeR set ImageNet's val features to its test features);
``fewclip_selection`` says what a run did from the method's config block alone. fewclip never chooses on test.
"""

from __future__ import annotations

from typing import Any, Mapping

from fewclip.heads.base import own_declaration
from fewclip.training.selection import MIN_VAL_PER_CLASS

# The protocol a published number was obtained with -> what it means
PAPER_SELECTIONS: dict[str, str] = {
    "none": "nothing to choose (zero-shot CLIP)",
    "validation-free": "fixed hyper-parameters and the last epoch; no validation images read",
    "few-shot validation": "chosen on a few-shot validation set (at most as many images a class as the shots)",
    "validation split": "chosen on the dataset's full validation split (more labelled images than the shots)",
    "test set (released code)": "chosen on the test set by the released code",
}
# What fewclip did in a run -> what it means (never the test set)
FEWCLIP_SELECTIONS: dict[str, str] = {
    "none": "nothing to choose (zero-shot)",
    "validation-free": "the last epoch, no calibration, no search: no validation image read",
    "validation split": "the epoch, a temperature or a search chosen on the run's validation split "
    "(splits.val_per_class images a class, at most the shots under splits.sampler: coop)",
}


def paper_selection(head_cls: type, dataset: str | None = None) -> str | None:
    """The protocol of the head's paper (on ``dataset``, a CoOp dataset name, where its code differs there); None
    for a head with no paper."""
    exceptions: dict[str, str] = own_declaration(head_cls, "paper_selection_except") or {}
    declared: str | None = own_declaration(head_cls, "paper_selection")
    return exceptions.get(dataset, declared) if dataset is not None else declared


def paper_selection_text(head_cls: type) -> str | None:
    """The paper's protocol in words for a table, its exceptions named: ``validation split (ImageNet: test ...)``."""
    exceptions: dict[str, str] = own_declaration(head_cls, "paper_selection_except") or {}
    shown = "; ".join(f"{dataset}: {value}" for dataset, value in exceptions.items())
    declared = paper_selection(head_cls)
    return None if declared is None else declared + (f" ({shown})" if shown else "")


def fewclip_selection(head_cls: type, block: Mapping[str, Any], val_per_class: int) -> str:
    """What fewclip chose on for a method: its head class, its config block's values (``select``, ``calibrate``,
    ``search``) and the run's ``splits.val_per_class``. ``select: auto`` reads val only from
    ``MIN_VAL_PER_CLASS`` images a class (below, it keeps the last epoch)."""
    if not getattr(head_cls, "uses_shots", False):
        return "none"
    select = block.get("select", "last")
    reads_val = (
        (select != "last" and (select != "auto" or val_per_class >= MIN_VAL_PER_CLASS))
        or bool(block.get("calibrate", False))
        or bool(block.get("search", False))
    )
    return "validation split" if reads_val and val_per_class > 0 else "validation-free"


def selection_label(paper: str | None, fewclip: str) -> str:
    """One table cell: ``paper: <protocol>; fewclip: <choice>`` (no paper part for fewclip's own heads)."""
    return (f"paper: {paper}; " if paper else "") + f"fewclip: {fewclip}"


def selection_problems(name: str, head_cls: type, owner: type) -> list[str]:
    """What a head class gets wrong about its selection declarations (``owner``: the class declaring its name)."""
    problems = []
    declared = vars(owner).get("paper_selection", ...)
    if declared not in PAPER_SELECTIONS and not (declared is None and vars(owner).get("paper") is None):
        problems.append(
            f"{name}: declare paper_selection in the class that declares its name, one of "
            f"{', '.join(map(repr, PAPER_SELECTIONS))} (how its paper chose hyper-parameters; None for a head "
            f"with no paper), got {'nothing' if declared is ... else repr(declared)}"
        )
    exceptions = getattr(head_cls, "paper_selection_except", None)
    if not isinstance(exceptions, dict) or not set(exceptions.values()) <= set(PAPER_SELECTIONS):
        problems.append(
            f"{name}: paper_selection_except must map a dataset name to one of "
            f"{', '.join(map(repr, PAPER_SELECTIONS))}, got {exceptions!r}"
        )
    if "validation_free" in vars(head_cls):
        problems.append(f"{name}: validation_free is gone: declare paper_selection = 'validation-free' instead")
    return problems


def method_selection(head_cls: type, block: Mapping[str, Any], val_per_class: int, dataset: str | None = None) -> str:
    """The label a table shows for a method: its paper's protocol (on ``dataset``; every exception named when
    None) and fewclip's choice (``fewclip_selection``)."""
    paper = paper_selection(head_cls, dataset) if dataset is not None else paper_selection_text(head_cls)
    return selection_label(paper, fewclip_selection(head_cls, block, val_per_class))
