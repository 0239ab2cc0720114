"""What CoOp and CoCoOp share: prompt layouts (where the class name and the context go, checked
against the tokenised sentence and the stock text encoder) and the training loop's resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.backbones.prompt_tower import PromptTextTower
from fewclip.heads import FeatureSet, normalize
from fewclip.heads.prompts.coop import ContextParams, CoOpPrompts
from fewclip.heads.prompts.learning import assemble, build_layout, context_init_ids, init_context
from fewclip.training.features_loop import FeatureTrainSettings, train_on_features

CLASS_NAMES = ["red circle", "green square", "blue triangle"]


class Killed(Exception):
    """Stands in for the process being killed at a chosen point."""


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def token_ids(backbone: CLIPBackbone, text: str) -> list[int]:
    return list(backbone.tokenizer(text)["input_ids"])  # with SOS and EOT, as the stock encoder sees it


def width(backbone: CLIPBackbone) -> int:
    return int(backbone.model.config.text_config.hidden_size)


def random_features(backbone: CLIPBackbone, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, backbone.dim, generator=torch.Generator().manual_seed(seed))


# --- where the class name goes --------------------------------------------------------------------


def expected_prompt(position: str, ctx_words: list[str], name: str) -> str:
    """The sentence a layout spells when the context vectors are these words' token embeddings."""
    half = len(ctx_words) // 2
    words = {
        "end": ctx_words + [name],
        "front": [name] + ctx_words,
        "middle": ctx_words[:half] + [name] + ctx_words[half:],
    }[position]
    return " ".join(words) + "."


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("ctx_words", [["a", "photo", "of"], ["a", "photo", "of", "the"]], ids=["odd", "even"])
def test_layout_token_ids_and_ctx_positions(backbone: CLIPBackbone, position: str, ctx_words: list[str]) -> None:
    tokenizer = backbone.tokenizer
    ctx_ids = context_init_ids(backbone.tokens, " ".join(ctx_words))
    n_ctx = len(ctx_ids)
    assert n_ctx == len(ctx_words)  # one token per word (the tiny tokenizer merges these four)
    layout = build_layout(backbone.tokens, CLASS_NAMES, n_ctx, position, 32)
    sos, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    sentences = [token_ids(backbone, expected_prompt(position, ctx_words, name)) for name in CLASS_NAMES]
    length = max(map(len, sentences))
    assert layout.length == length  # cut to the longest real prompt
    for c, name in enumerate(CLASS_NAMES):
        name_ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        first = {"end": 1, "front": 1 + len(name_ids), "middle": 1}[position]
        if position == "middle":
            expected_positions = list(range(1, 1 + n_ctx // 2)) + list(
                range(1 + n_ctx // 2 + len(name_ids), 1 + n_ctx + len(name_ids))
            )
        else:
            expected_positions = list(range(first, first + n_ctx))
        assert layout.ctx_positions[c].tolist() == expected_positions
        row = layout.token_ids[c].tolist()
        assert all(row[p] == sos for p in expected_positions)  # placeholders where the context goes
        # with the context words put in its slots, the row is the tokenised sentence, padded with EOT
        filled = list(row)
        for p, word_id in zip(expected_positions, ctx_ids):
            filled[p] = word_id
        assert filled == sentences[c] + [eot] * (length - len(sentences[c]))
        assert layout.eot_positions[c].item() == len(sentences[c]) - 1
        assert row[len(sentences[c]) - 2] == tokenizer(".", add_special_tokens=False)["input_ids"][0]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("n_ctx", [3, 4])
def test_assemble_puts_context_vectors_in_their_slots(backbone: CLIPBackbone, position: str, n_ctx: int) -> None:
    tower = PromptTextTower(backbone.model)
    layout = build_layout(backbone.tokens, CLASS_NAMES, n_ctx, position, 32)
    base = tower.embed_tokens(layout.token_ids).detach()  # (C, L, w)
    # context vector j is the constant 1000 + j: its place in every row is unmistakable
    ctx = (1000.0 + torch.arange(n_ctx, dtype=torch.float32))[:, None].expand(n_ctx, width(backbone))
    prompts = assemble(base, ctx.expand(len(CLASS_NAMES), -1, -1), layout.ctx_positions)
    assert prompts.shape == base.shape
    for c in range(len(CLASS_NAMES)):
        for j, p in enumerate(layout.ctx_positions[c].tolist()):
            assert torch.equal(prompts[c, p], ctx[j])
        others = [p for p in range(layout.length) if p not in layout.ctx_positions[c].tolist()]
        assert torch.equal(prompts[c, others], base[c, others])  # name, '.', EOT and padding untouched
    # class-specific contexts: row c gets its own context
    per_class = ctx[None] + 100.0 * torch.arange(len(CLASS_NAMES), dtype=torch.float32)[:, None, None]
    specific = assemble(base, per_class, layout.ctx_positions)
    for c in range(len(CLASS_NAMES)):
        assert torch.equal(specific[c, layout.ctx_positions[c]], per_class[c])


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("ctx_words", [["a", "photo", "of"], ["a", "photo", "of", "the"]], ids=["odd", "even"])
def test_word_context_equals_the_stock_encoder_on_that_sentence(
    backbone: CLIPBackbone, position: str, ctx_words: list[str]
) -> None:
    """End to end: context = these words' embeddings -> exactly the stock features of the sentence."""
    tower = PromptTextTower(backbone.model)
    ctx_ids = torch.tensor(context_init_ids(backbone.tokens, " ".join(ctx_words)))
    ctx = tower.embed_tokens(ctx_ids).detach()
    prompts = CoOpPrompts(backbone, CLASS_NAMES, len(ctx_words), position, "fp32", "coop")
    embeds = assemble(prompts.base, ctx.expand(len(CLASS_NAMES), -1, -1), prompts.layout.ctx_positions)
    for c, name in enumerate(CLASS_NAMES):
        sentence = torch.tensor(token_ids(backbone, expected_prompt(position, ctx_words, name)))
        assert torch.equal(embeds[c, : len(sentence)], tower.embed_tokens(sentence))
    sentences = [expected_prompt(position, ctx_words, name) for name in CLASS_NAMES]
    expected = normalize(backbone.encode_text(sentences))
    assert (prompts.features(ctx) - expected).abs().max().item() <= 1e-5
    # the same words at another position spell another sentence: different features
    elsewhere = "front" if position != "front" else "end"
    moved = CoOpPrompts(backbone, CLASS_NAMES, len(ctx_words), elsewhere, "fp32", "coop").features(ctx)
    assert (moved - expected).abs().max().item() > 1e-2


def test_class_specific_context_gives_each_class_its_own_sentence(backbone: CLIPBackbone) -> None:
    words = [["a", "photo", "of"], ["the", "photo", "of"], ["of", "a", "the"]]
    tower = PromptTextTower(backbone.model)
    ctx = torch.stack(
        [tower.embed_tokens(torch.tensor(context_init_ids(backbone.tokens, " ".join(w)))).detach() for w in words]
    )  # (C, 3, w)
    features = CoOpPrompts(backbone, CLASS_NAMES, 3, "end", "fp32", "coop").features(ctx)
    expected = normalize(backbone.encode_text([" ".join(w + [name]) + "." for w, name in zip(words, CLASS_NAMES)]))
    assert (features - expected).abs().max().item() <= 1e-5
    shared = CoOpPrompts(backbone, CLASS_NAMES, 3, "end", "fp32", "coop").features(ctx[0])
    assert (shared[1:] - expected[1:]).abs().max().item() > 1e-2


# --- resuming -------------------------------------------------------------------------------------


SETTINGS = FeatureTrainSettings(
    epochs=5, batch_size=4, lr=0.02, momentum=0.9, weight_decay=5e-4, warmup_epochs=1, warmup_lr=1e-3
)


class CoOpRun:
    """train_on_features on CoOp prompts, counting (and optionally failing) logits calls."""

    def __init__(self, backbone: CLIPBackbone, fail_at_call: int | None = None) -> None:
        self.backbone, self.fail_at_call, self.calls = backbone, fail_at_call, 0
        ctx = init_context(
            PromptTextTower(backbone.model), backbone.tokens, 4, None, 3, False, torch.Generator().manual_seed(5)
        )
        self.params = ContextParams(ctx)
        self.prompts = CoOpPrompts(backbone, CLASS_NAMES, 4, "end", "fp32", "coop")

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise Killed(f"killed at call {self.calls}")
        return self.backbone.logit_scale * normalize(features) @ self.prompts.features(self.params.ctx).T

    def __call__(
        self, checkpoint: Path | None, settings: FeatureTrainSettings = SETTINGS, select: str = "val_macro_f1"
    ) -> Any:
        train = FeatureSet(random_features(self.backbone, 12, seed=7), torch.arange(3).repeat(4))
        val = FeatureSet(random_features(self.backbone, 6, seed=8), torch.arange(3).repeat(2))
        # val_macro_f1: the checkpoint also carries the best state so far, which a resume must restore
        return train_on_features(
            self.params, self.logits, train, val, 3, settings, seed=3, checkpoint=checkpoint, select=select
        )


CALLS_PER_EPOCH = 3 + 1  # 12 images in batches of 4, then one val call


def assert_same_run(result: Any, run: CoOpRun, reference: Any, reference_run: CoOpRun) -> None:
    history, best_epoch, last = result
    assert history == reference[0]
    assert best_epoch == reference[1]
    assert torch.equal(last["ctx"], reference[2]["ctx"])
    assert torch.equal(run.params.ctx, reference_run.params.ctx)


@pytest.fixture(scope="module")
def uninterrupted(backbone: CLIPBackbone) -> tuple[Any, CoOpRun]:
    run = CoOpRun(backbone)
    result = run(None)
    assert run.calls == SETTINGS.epochs * CALLS_PER_EPOCH
    assert len(result[0]) == SETTINGS.epochs and not torch.equal(result[2]["ctx"], CoOpRun(backbone).params.ctx)
    return result, run


@pytest.mark.parametrize("killed_in_epoch", [1, 3, 5])
def test_killed_run_resumes_from_its_last_saved_epoch(
    backbone: CLIPBackbone, tmp_path: Path, killed_in_epoch: int, uninterrupted: tuple[Any, CoOpRun]
) -> None:
    checkpoint = tmp_path / "unit.ckpt.safetensors"
    done = killed_in_epoch - 1
    first = CoOpRun(backbone, fail_at_call=done * CALLS_PER_EPOCH + 2)  # mid-way through the epoch
    with pytest.raises(Killed):
        first(checkpoint)
    second = CoOpRun(backbone)
    result = second(checkpoint)
    assert second.calls == (SETTINGS.epochs - done) * CALLS_PER_EPOCH  # the saved epochs are not redone
    assert_same_run(result, second, *uninterrupted)


def test_kill_at_any_file_write_resumes_to_the_same_result(
    backbone: CLIPBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed right after each file operation that commits a checkpoint (every os.replace), in turn."""
    real_replace = os.replace
    settings = FeatureTrainSettings(**{**vars(SETTINGS), "epochs": 3})
    reference_run = CoOpRun(backbone)
    reference = reference_run(None, settings)
    commits = 0
    while True:
        commits += 1
        checkpoint = tmp_path / f"kill-{commits}" / "unit.ckpt.safetensors"
        count = 0

        def replace_then_die(src: Any, dst: Any) -> None:
            nonlocal count
            real_replace(src, dst)
            count += 1
            if count == commits:
                raise Killed(f"killed after file operation {count}")

        monkeypatch.setattr(os, "replace", replace_then_die)
        try:
            CoOpRun(backbone)(checkpoint, settings)
            finished = True
        except Killed:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        if finished:
            break
        resumed = CoOpRun(backbone)
        assert_same_run(resumed(checkpoint, settings), resumed, reference, reference_run)
    assert commits > settings.epochs  # at least one commit per epoch was interrupted


def test_checkpoint_of_other_settings_is_not_resumed(
    backbone: CLIPBackbone, tmp_path: Path, uninterrupted: tuple[Any, CoOpRun]
) -> None:
    """A run killed, then started again with another lr: the stale checkpoint must not be mixed in."""
    checkpoint = tmp_path / "unit.ckpt.safetensors"
    other = FeatureTrainSettings(**{**vars(SETTINGS), "lr": 0.005})
    with pytest.raises(Killed):
        CoOpRun(backbone, fail_at_call=2 * CALLS_PER_EPOCH + 1)(checkpoint, other)
    run = CoOpRun(backbone)
    result = run(checkpoint)
    assert run.calls == SETTINGS.epochs * CALLS_PER_EPOCH
    assert_same_run(result, run, *uninterrupted)


def test_checkpoint_of_another_selection_rule_is_not_resumed(
    backbone: CLIPBackbone, tmp_path: Path, uninterrupted: tuple[Any, CoOpRun]
) -> None:
    """The rule decides which state the checkpoint keeps as best: another rule's must not be mixed in."""
    checkpoint = tmp_path / "unit.ckpt.safetensors"
    with pytest.raises(Killed):
        CoOpRun(backbone, fail_at_call=2 * CALLS_PER_EPOCH + 1)(checkpoint, SETTINGS, "val_loss")
    run = CoOpRun(backbone)
    result = run(checkpoint)
    assert run.calls == SETTINGS.epochs * CALLS_PER_EPOCH
    assert_same_run(result, run, *uninterrupted)
    assert result[1].rule == "val_macro_f1"
