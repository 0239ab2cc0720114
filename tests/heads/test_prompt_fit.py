"""Every prompt a head encodes is checked against the model's text positions before any work.

The tiny CLIP has 32 positions; its tokenizer splits most words into characters, so long names are easy
to build. Token counts are recomputed with transformers' own tokenizer, untruncated.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

import fewclip.heads
from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.heads import CoOpHead, FeatureSet, Task, ZeroShotHead
from fewclip.heads.prompts.cocoop import CoCoOpConfig
from fewclip.heads.prompts.coop import CoOpConfig

LIMIT = 32
# two names far longer than 32 tokens that differ only at their end: truncated, they would be one prompt
LONG_A = "red circle " * 5 + "alpha"
LONG_B = "red circle " * 5 + "omega"


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="module")
def unlimited_clip(tiny_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP whose tokenizer states no length limit (model_max_length falls back to a huge number)."""
    folder = tmp_path_factory.mktemp("unlimited") / "model"
    shutil.copytree(tiny_clip, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("model_max_length")
    config_file.write_text(json.dumps(config))
    return folder


def untruncated_count(tiny_clip: Path, text: str) -> int:
    return len(AutoTokenizer.from_pretrained(str(tiny_clip))(text)["input_ids"])


@pytest.fixture()
def no_text_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("text was encoded before the prompts were checked")

    monkeypatch.setattr(CLIPBackbone, "encode_text", refuse)


def test_zero_shot_names_the_template_class_count_and_limit(
    backbone: CLIPBackbone, tiny_clip: Path, no_text_encoding: None
) -> None:
    templates = ["a photo of a {}.", "{}"]
    count = untruncated_count(tiny_clip, templates[0].format(LONG_A))
    assert count > LIMIT
    with pytest.raises(ValueError) as err:
        ZeroShotHead().fit(Task(["red circle", LONG_A, LONG_B], templates, backbone))
    message = str(err.value)
    assert message.startswith("zero_shot: 4 prompt(s) need more tokens than the model's 32 text positions")
    assert f"template 'a photo of a {{}}.' with class {LONG_A!r}: {count} tokens" in message
    assert f"template '{{}}' with class {LONG_B!r}: {untruncated_count(tiny_clip, LONG_B)} tokens" in message
    assert "'red circle'" not in message  # the short name fits under both templates
    assert "prompts.templates" in message and "dataset.rename" in message


def test_a_prompt_of_exactly_the_limit_is_encoded(backbone: CLIPBackbone, tiny_clip: Path) -> None:
    name = "x" * 30  # SOS + 30 characters + EOT = 32
    assert untruncated_count(tiny_clip, name) == LIMIT
    head = ZeroShotHead().fit(Task([name, "y" * 30], ["{}"], backbone))
    assert head.prototypes_.shape == (2, backbone.dim)
    with pytest.raises(ValueError, match=r"with class 'x{31}': 33 tokens"):
        ZeroShotHead().fit(Task(["x" * 31], ["{}"], backbone))


def test_tokenizer_without_a_limit_fails_with_the_same_message(unlimited_clip: Path) -> None:
    unlimited = load_backbone(ModelConfig(id=str(unlimited_clip), device="cpu"))
    assert unlimited.tokenizer.model_max_length > 10**20  # no limit of its own: the model's positions decide
    with pytest.raises(ValueError, match=r"^zero_shot: 2 prompt\(s\) need more tokens than the model's 32 text"):
        ZeroShotHead().fit(Task([LONG_A, LONG_B], ["{}"], unlimited))
    with pytest.raises(ValueError, match=rf"text {LONG_A!r} needs \d+ tokens but model .* reads at most 32"):
        unlimited.encode_text(["short", LONG_A])  # the library call never truncates either


def test_encode_text_never_truncates(backbone: CLIPBackbone) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(LONG_B))):
        backbone.encode_text([LONG_A[:5], LONG_B])


def features(backbone: CLIPBackbone, n_classes: int) -> FeatureSet:
    labels = torch.arange(n_classes).repeat(2)
    return FeatureSet(torch.randn(len(labels), backbone.dim, generator=torch.Generator().manual_seed(0)), labels)


@pytest.mark.parametrize(
    "head_cls, config", [(CoOpHead, CoOpConfig(n_ctx=4)), (fewclip.heads.CoCoOpHead, CoCoOpConfig())]
)
def test_a_name_too_long_on_its_own_does_not_blame_the_context(
    head_cls: Any, config: Any, backbone: CLIPBackbone, tiny_clip: Path
) -> None:
    names = ["red circle", LONG_A]
    name_tokens = untruncated_count(tiny_clip, LONG_A) - 2
    with pytest.raises(ValueError) as err:
        head_cls(config).fit(Task(names, backbone=backbone), features(backbone, 2), None)
    message = str(err.value)
    assert f"the prompt for class {LONG_A!r} needs {name_tokens + 3} tokens before any context" in message
    assert "32 text positions" in message and "shorten the class name (dataset.rename)" in message
    assert "n_ctx" not in message and "ctx_init" not in message


def test_too_much_context_says_how_far_to_lower_n_ctx(backbone: CLIPBackbone, tiny_clip: Path) -> None:
    name = "blue triangle"
    without_context = untruncated_count(tiny_clip, name) + 1  # SOS, name, '.', EOT
    with pytest.raises(ValueError) as err:
        CoOpHead(CoOpConfig(n_ctx=LIMIT)).check(Task([name], backbone=backbone))
    assert f"lower coop.n_ctx to at most {LIMIT - without_context}, or shorten the class name" in str(err.value)
    CoOpHead(CoOpConfig(n_ctx=LIMIT - without_context)).check(Task([name], backbone=backbone))  # fits exactly


def test_too_long_ctx_init_names_ctx_init(backbone: CLIPBackbone) -> None:
    words = " ".join(["photo"] * 25)  # 25 context tokens: 'photo' is one merged token
    with pytest.raises(ValueError, match=r"cocoop: .* needs .*use fewer words in cocoop\.ctx_init"):
        fewclip.heads.CoCoOpHead(CoCoOpConfig(ctx_init=words)).check(Task(["blue triangle"], backbone=backbone))


def test_ctx_init_words_the_tokenizer_splits_are_refused_before_training(backbone: CLIPBackbone) -> None:
    """n_ctx is ctx_init's word count (resolved with the config); a word of several tokens cannot be one vector."""
    config = CoOpConfig(ctx_init="a photograph")
    assert config.n_ctx == 2
    tokens = len(backbone.tokens.word_ids("a photograph"))
    assert tokens > 2  # the tiny tokenizer spells 'photograph' letter by letter
    with pytest.raises(ValueError) as err:
        CoOpHead(config).check(Task(["red circle"], backbone=backbone))
    assert str(err.value).startswith(
        f"coop.ctx_init 'a photograph': its 2 word(s) are {tokens} tokens for this model's tokenizer"
    )
    assert "set coop.ctx_init: null and coop.n_ctx" in str(err.value)
