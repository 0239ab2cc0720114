"""Which epoch an iterative head keeps: one rule shared by the linear probe, CoOp and CoCoOp.

The heads' ``select`` option:

- ``val_macro_f1``: the epoch best on val macro-F1, ties broken by the lower val loss.
- ``val_loss``: the epoch with the lowest val loss.
- ``val_accuracy``: the epoch with the highest val accuracy, the latest of ties (LP++'s official code keeps the
  test accuracy of every epoch whose val accuracy is ``>=`` the best so far).
- ``last``: the last epoch, the end of the schedule (what CoOp, CoCoOp and CLIP's linear probe report).
- ``auto`` (default): the last epoch, unless the validation split is large enough to tell epochs apart
  (at least ``MIN_VAL_PER_CLASS`` images in every class) and the val-macro-F1 epoch is clearly better:
  the last epoch's val accuracy falls below the 95% Wilson interval of that epoch's. Model selection on
  a handful of images picks an epoch by noise (with 4 images per class one image moves a class's recall
  by 25 points, and epochs tie), so without evidence the schedule's end wins.

``select_epoch`` decides from the history rows alone; every training loop keeps, through ``BestEpoch``,
the state of the rule's candidate (``candidate_score``) besides the last epoch's, the only two it can return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from fewclip.metrics import summarize
from fewclip.stats import wilson_interval

SelectRule = Literal["auto", "val_macro_f1", "val_loss", "val_accuracy", "last"]
SELECT_HELP = (
    "Which epoch to keep: auto (the last epoch unless val has >= 10 images per class and shows an "
    "earlier epoch clearly better), val_macro_f1, val_loss, val_accuracy (the latest of ties) or last."
)

# With k val images per class one image moves a class's recall by 1/k; below 10 that step is over 10 points
# and the 95% interval of a class's recall spans more than half the range, so epochs cannot be ranked.
MIN_VAL_PER_CLASS = 10


@dataclass(frozen=True)
class Selection:
    """The kept epoch (1-based) and what chose it, e.g. ``last_epoch (val too small: 4/class < 10)``."""

    epoch: int
    rule: str


def validation_scores(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, float]:
    """A history row's validation columns, which the rules read: val_accuracy, val_macro_f1 and val_loss of the
    (n, C) float ``logits`` on the (n,) ``labels`` (in the order the history files list them)."""
    scores = summarize(labels.numpy(), logits.argmax(-1).numpy(), n_classes)
    return {
        "val_accuracy": scores["accuracy"],
        "val_macro_f1": scores["macro_f1"],
        "val_loss": float(nn.functional.cross_entropy(logits, labels)),
    }


def tracks_candidate(rule: SelectRule) -> bool:
    """Whether the loop must keep a copy of the best state so far (``last`` needs only the final one)."""
    return rule != "last"


def candidate_score(rule: SelectRule, row: dict[str, float]) -> tuple[float, ...]:
    """What the rule maximises over epochs (``auto`` starts from the val-macro-F1 candidate)."""
    if rule == "val_loss":
        return (-row["val_loss"],)
    if rule == "val_accuracy":  # the epoch breaks ties: a later epoch with the same accuracy is a new candidate
        return (row["val_accuracy"], row["epoch"])
    return (row["val_macro_f1"], -row["val_loss"])


def candidate_epoch(rule: SelectRule, history: Sequence[dict[str, float]]) -> int:
    """The first epoch with the highest ``candidate_score`` (what a loop keeping strict improvements holds)."""
    scores = [candidate_score(rule, row) for row in history]
    return scores.index(max(scores)) + 1


def val_per_class(labels: torch.Tensor | None, n_classes: int) -> int:
    """The fewest validation images of any class (0 without a validation split)."""
    if labels is None or len(labels) == 0:
        return 0
    return int(torch.bincount(labels.long(), minlength=n_classes)[:n_classes].min())


def select_epoch(
    rule: SelectRule,
    history: Sequence[dict[str, Any]],
    val_labels: torch.Tensor | None,
    n_classes: int,
    min_per_class: int = MIN_VAL_PER_CLASS,
) -> Selection:
    """The epoch to keep under ``rule`` (see the module doc), from the per-epoch history rows."""
    last = len(history)
    if rule == "last":
        return Selection(last, "last_epoch")
    if val_labels is None or len(val_labels) == 0 or not all("val_loss" in row for row in history):
        return Selection(last, "last_epoch (no validation split)")
    if rule in ("val_macro_f1", "val_loss", "val_accuracy"):
        return Selection(candidate_epoch(rule, history), rule)
    per_class = val_per_class(val_labels, n_classes)
    if per_class < min_per_class:
        return Selection(last, f"last_epoch (val too small: {per_class}/class < {min_per_class})")
    best = candidate_epoch("val_macro_f1", history)
    if best == last:
        return Selection(last, "val_macro_f1 (the last epoch is the best)")
    n = len(val_labels)
    best_acc, last_acc = history[best - 1]["val_accuracy"], history[-1]["val_accuracy"]
    low, high = wilson_interval(best_acc * n, n)
    comparison = (
        f"epoch {best} val accuracy {best_acc:.3f}, last {last_acc:.3f}, 95% Wilson interval "
        f"[{low:.3f}, {high:.3f}] on {n} images"
    )
    if last_acc >= low:
        return Selection(last, f"last_epoch (val flat: {comparison})")
    return Selection(best, f"val_macro_f1 ({comparison})")


def best_epoch(head: Any) -> int | None:
    """The epoch a fitted head kept (None for a head that does not train over epochs)."""
    return head.best_epoch_ if head.selects_epoch else None


def kept_val_accuracy(history: Sequence[dict[str, Any]], epoch: int | None) -> float | None:
    """The validation accuracy of the epoch a head kept (``epoch``, 1-based; the last one scored when ``None``),
    for the line said as a unit ends; ``None`` when no epoch was scored on validation images."""
    scored = [row for row in history if "val_accuracy" in row]
    if not scored:
        return None
    kept = next((row for row in scored if epoch is not None and row.get("epoch") == epoch), scored[-1])
    return float(kept["val_accuracy"])


@dataclass
class BestEpoch:
    """The one path every iterative head keeps its epoch by: ``observe`` each epoch's history row as it
    ends (a copy of the state is taken only when it is the rule's new candidate), then ``choose`` applies
    ``select_epoch`` and returns the state to restore (None: keep the last epoch's).

    ``epoch``, ``score`` and ``state`` are the candidate so far (what a checkpoint saves to resume).
    """

    rule: SelectRule
    epoch: int | None = None
    score: tuple[float, ...] | None = None
    state: dict[str, torch.Tensor] | None = None

    def observe(self, epoch: int, row: dict[str, float], state: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Epoch ``epoch`` (1-based) ended with ``row``; ``state()`` copies the model if it is the new candidate."""
        if not tracks_candidate(self.rule) or "val_loss" not in row:
            return
        score = candidate_score(self.rule, row)
        if self.score is None or score > self.score:  # strict: ties keep the earlier epoch
            self.epoch, self.score, self.state = epoch, score, state()

    def choose(
        self, history: Sequence[dict[str, Any]], val_labels: torch.Tensor | None, n_classes: int
    ) -> tuple[Selection, dict[str, torch.Tensor] | None]:
        """The rule's selection, and the kept state when it is not the last epoch's."""
        selection = select_epoch(self.rule, history, val_labels, n_classes)
        if selection.epoch == len(history):
            return selection, None
        assert self.epoch == selection.epoch and self.state is not None, (self.epoch, selection)
        return selection, self.state


def fit_meta(head: Any) -> dict[str, Any]:
    """What the head JSON records about how a freshly fitted head chose its epoch and its temperature."""
    selection: Selection | None = head.selection_ if head.selects_epoch else None
    calibration = head.calibration_ if head.calibrates else None
    return {
        "selection_rule": selection.rule if selection else None,
        "kept_first_epoch": bool(selection and selection.epoch == 1 and len(head.history_) > 1),
        "temperature": calibration.temperature if calibration else 1.0,
        "calibration": calibration.note if calibration else None,
    }
