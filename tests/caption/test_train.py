"""Training: the toy task is learnt by every method, resume equals an uninterrupted run, the encoder
cache gives the same loss as encoding on the fly, the best validation epoch is kept."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fewclip.caption.decode import DecodeConfig, caption_tokens
from fewclip.caption.encoder_cache import EncoderTokens, encoder_cache_mb
from fewclip.caption.model import CaptionModel
from fewclip.caption.train import CaptionTrainConfig, train_captioner

RECIPE = CaptionTrainConfig(epochs=6, batch_size=4, lr=3e-3, lr_step_epochs=4)


def examples_of(pairs):
    images = {hashlib.sha1(path.read_bytes()).hexdigest(): path for path, _ in pairs}
    sha = {path: key for key, path in images.items()}
    return images, [(sha[path], caption) for path, caption in pairs]


def accuracy(model, tokens, examples) -> float:
    captions = caption_tokens(model, tokens([key for key, _ in examples]), DecodeConfig(max_length=6))
    return sum(c == ref for c, (_, ref) in zip(captions, examples)) / len(examples)


@pytest.mark.parametrize("method", ["adapter", "prefix", "lora"])
def test_each_method_learns_the_colour_of_the_square(caption_config, toy_pairs, method, tmp_path):
    """The decoder knows 'a <colour> square' but not which colour: only reading the image tells."""
    images, examples = examples_of(toy_pairs)
    train, held_out = examples[:16], examples[16:]  # 4 of each colour to train on, 2 of each held out
    baseline = CaptionModel(caption_config(method="untrained"))
    tokens = EncoderTokens(baseline, images, tmp_path / "cache", 100)
    assert accuracy(baseline, tokens, held_out) <= 0.5
    model = CaptionModel(caption_config(method=method))
    done = train_captioner(model, train, tokens, RECIPE, seed=0)
    losses = [row["train_loss"] for row in done.history]
    assert losses[-1] < losses[0] / 4, losses
    assert accuracy(model, tokens, held_out) >= 0.75
    assert [row["lr"] for row in done.history] == pytest.approx([3e-3] * 4 + [1.5e-3] * 2)  # step decay


def test_resume_after_a_kill_equals_an_uninterrupted_run(caption_config, toy_pairs, tmp_path):
    """LoRA has dropout, so the dropout draws must also be the same after resuming."""
    images, examples = examples_of(toy_pairs[:12])
    recipe = RECIPE.model_copy(update={"epochs": 3, "lr_step_epochs": 1})  # the schedule's state matters too

    def score(model) -> float:  # a validation score that depends on the weights only, as CIDEr does
        return -float(model.trainable_state()["projection.weight"].abs().sum())

    whole = CaptionModel(caption_config(method="lora"))
    tokens = EncoderTokens(whole, images, None, 0)
    uninterrupted = train_captioner(whole, examples, tokens, recipe, seed=5, val_score=score)

    checkpoint = tmp_path / "ckpt.safetensors"
    with pytest.raises(KeyboardInterrupt):  # killed while epoch 2 ends, after epoch 1 was saved
        train_captioner(
            CaptionModel(caption_config(method="lora")),
            examples,
            tokens,
            recipe,
            seed=5,
            val_score=score,
            checkpoint=checkpoint,
            on_epoch=_kill_at_epoch(2),
        )
    resumed_model = CaptionModel(caption_config(method="lora"))
    resumed_epochs: list[float] = []
    resumed = train_captioner(
        resumed_model,
        examples,
        tokens,
        recipe,
        seed=5,
        val_score=score,
        checkpoint=checkpoint,
        on_epoch=lambda row: resumed_epochs.append(row["epoch"]),
    )
    assert resumed_epochs == [2.0, 3.0]  # epoch 1 came from the checkpoint
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(resumed.history) == strip(uninterrupted.history)
    assert (resumed.best_epoch, resumed.best_score) == (uninterrupted.best_epoch, uninterrupted.best_score)
    for name, value in whole.trainable_state().items():
        assert torch.equal(resumed_model.trainable_state()[name], value), name


def _kill_at_epoch(epoch: int):
    def on_epoch(row: dict[str, float]) -> None:  # runs before the epoch's checkpoint is written
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    return on_epoch


def test_best_validation_epoch_is_kept(caption_config, toy_pairs):
    images, examples = examples_of(toy_pairs[:8])
    model = CaptionModel(caption_config(method="adapter"))
    tokens = EncoderTokens(model, images, None, 0)
    states = []
    scores = iter([0.2, 0.9, 0.4])

    def score(m):
        states.append(m.trainable_state())
        return next(scores)

    done = train_captioner(model, examples, tokens, RECIPE.model_copy(update={"epochs": 3}), val_score=score)
    assert (done.best_epoch, done.best_score) == (2, 0.9)
    assert [row["val_cider"] for row in done.history] == [0.2, 0.9, 0.4]
    assert all(row["seconds"] > 0 for row in done.history)
    for name, value in model.trainable_state().items():
        assert torch.equal(value, states[1][name]) and not torch.equal(value, states[2][name])


def test_cached_and_on_the_fly_encoder_outputs_give_the_same_training(caption_config, toy_pairs, tmp_path):
    images, examples = examples_of(toy_pairs[:8])
    recipe = RECIPE.model_copy(update={"epochs": 2})
    histories = []
    for budget in (encoder_cache_mb(CaptionModel(caption_config(method="prefix")), len(images)), 0.0):
        model = CaptionModel(caption_config(method="prefix"))
        tokens = EncoderTokens(model, images, tmp_path / "cache", budget)
        assert tokens.cached == (budget > 0)
        histories.append([row["train_loss"] for row in train_captioner(model, examples, tokens, recipe).history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5, abs=1e-7)
    assert len(list((tmp_path / "cache" / "features").glob("*/*.npy"))) == 1  # cached once, in one shard


def test_untrained_method_has_nothing_to_train(caption_config, toy_pairs):
    images, examples = examples_of(toy_pairs[:4])
    model = CaptionModel(caption_config(method="untrained"))
    with pytest.raises(ValueError, match="'untrained' has nothing to train"):
        train_captioner(model, examples, EncoderTokens(model, images, None, 0))
