"""Checks that every text prompt a head will encode fits the text tower, run before any work.

The limit is the text tower's own position count (``backbone.max_text_positions``): a tokenizer's
``model_max_length`` may be missing or huge, and truncating would silently give two long class names
the same prompt. A prompt that does not fit is an error naming the template, the class, the token
count, the limit and what to change.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from fewclip.backbones.protocol import Backbone, TextTokens
from fewclip.heads.base import Task, task_backbone

SHOWN = 5  # offending prompts listed in one message


def text_positions(backbone: Backbone) -> int:
    """How many token positions the backbone's text tower has (SOS and EOT included)."""
    return int(backbone.max_text_positions)


def check_templates_fit(
    tokens: TextTokens, templates: Sequence[str], class_names: Sequence[str], limit: int, key: str = "zero_shot"
) -> None:
    """Fail if any ``template.format(name)`` needs more than ``limit`` tokens (every pair is checked)."""
    pairs = [(template, name) for template in templates for name in class_names]
    counts = tokens.counts([template.format(name) for template, name in pairs])
    too_long = [(template, name, count) for (template, name), count in zip(pairs, counts) if count > limit]
    if not too_long:
        return
    lines = [f"template {t!r} with class {n!r}: {c} tokens" for t, n, c in too_long[:SHOWN]]
    more = f"\n  ... and {len(too_long) - SHOWN} more" if len(too_long) > SHOWN else ""
    raise ValueError(
        f"{key}: {len(too_long)} prompt(s) need more tokens than the model's {limit} text positions "
        f"(start and end tokens included); they would be cut, and "
        f"names that differ only after the cut would get the same prompt:\n  "
        + "\n  ".join(lines)
        + more
        + "\nUse shorter templates (prompts.templates) or shorter class names (dataset.rename)."
    )


def check_template_task(task: Task, key: str) -> None:
    """The check of every head that encodes ``template.format(name)`` prompts: the backbone is there and
    every prompt fits its text positions (``key`` names the head in the message)."""
    backbone = task_backbone(task, key)
    check_templates_fit(backbone.tokens, task.templates, task.class_names, text_positions(backbone), key)


class ChecksTemplates:
    """What a head that encodes ``template.format(name)`` prompts declares (zero-shot, Tip-Adapter, CLIP-Adapter,
    ZS-LP, CLAP): it reads the text tower, and its ``check`` refuses, before any work, a prompt that does not fit.
    Listed before ``HeadBase`` among a head's bases, so that its flags win over the base's defaults."""

    name: ClassVar[str]
    uses_text: ClassVar[bool] = True
    checks_task: ClassVar[bool] = True

    def check(self, task: Task) -> None:
        """Fail before any work if a template + class name prompt exceeds the model's text positions."""
        check_template_task(task, self.name)
