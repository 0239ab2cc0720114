"""The default run's prompts fit the shipped world CLIP's 32 text positions, and it names that CLIP by alias."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from fewclip.backbones import ModelConfig, load_backbone
from fewclip.backbones.model_source import WORLD_ALIAS
from fewclip.runner.config import load_config
from fewclip.runner.demo import DEFAULT_WORLD_CLASSES, DEFAULT_WORLD_TEMPLATES, embedded_config
from fewclip.heads import HEADS, Task
from fewclip.runner.run_context import head_config
from fewclip.world import CHECKPOINT, CLASSES


def test_default_config_names_the_world_clip_by_alias(tmp_path: Path) -> None:
    config = load_config(None, base=embedded_config(tmp_path))
    assert config.model.id == WORLD_ALIAS
    assert config.prompts.templates == DEFAULT_WORLD_TEMPLATES


def test_default_templates_fit_every_world_class_untruncated() -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(CHECKPOINT))
    counts = [len(tokenizer(t.format(name))["input_ids"]) for t in DEFAULT_WORLD_TEMPLATES for name in CLASSES]
    assert max(counts) == 9 <= 32


@pytest.mark.parametrize("method", sorted(HEADS.names()))
def test_every_head_of_the_default_run_passes_its_prompt_check(method: str, tmp_path: Path) -> None:
    config = load_config(None, base=embedded_config(tmp_path))
    backbone = load_backbone(ModelConfig(id=WORLD_ALIAS, device="cpu"))
    head = HEADS.get(method)(head_config(config, method))
    if hasattr(head, "check"):
        head.check(Task(DEFAULT_WORLD_CLASSES, config.prompts.templates, backbone))  # raises if a prompt is too long
