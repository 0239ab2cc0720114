"""Checks that every text prompt a head will encode fits the text tower, run before any work.

The limit is the model's own ``text_config.max_position_embeddings``: a tokenizer's
``model_max_length`` may be missing or huge, and truncating would silently give two long class names
the same prompt. A prompt that does not fit is an error naming the template, the class, the token
count, the limit and what to change.
"""

from __future__ import annotations

from typing import Any, Sequence

SHOWN = 5  # offending prompts listed in one message


def text_positions(backbone: Any) -> int:
    """How many token positions the backbone's text tower has (SOS and EOT included)."""
    return int(backbone.model.config.text_config.max_position_embeddings)


def token_counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens of each text as the text tower reads it (SOS and EOT included), never truncated."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]


def check_templates_fit(tokenizer: Any, templates: Sequence[str], class_names: Sequence[str], limit: int,
                        key: str = "zero_shot") -> None:
    """Fail if any ``template.format(name)`` needs more than ``limit`` tokens (every pair is checked)."""
    pairs = [(template, name) for template in templates for name in class_names]
    counts = token_counts(tokenizer, [template.format(name) for template, name in pairs])
    too_long = [(template, name, count) for (template, name), count in zip(pairs, counts) if count > limit]
    if not too_long:
        return
    lines = [f"template {t!r} with class {n!r}: {c} tokens" for t, n, c in too_long[:SHOWN]]
    more = f"\n  ... and {len(too_long) - SHOWN} more" if len(too_long) > SHOWN else ""
    raise ValueError(
        f"{key}: {len(too_long)} prompt(s) need more tokens than the model's {limit} text positions "
        f"(text_config.max_position_embeddings, start and end tokens included); they would be cut, and "
        f"names that differ only after the cut would get the same prompt:\n  " + "\n  ".join(lines) + more +
        "\nUse shorter templates (prompts.templates) or shorter class names (dataset.rename)."
    )
