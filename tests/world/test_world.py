"""The procedural world, its data source, its tokenizer and its pretraining."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTokenizer

from fewclip.runner.config import ConfigError
from fewclip.data.sources.world import render_png
from fewclip.fileio import read_csv
from fewclip.runner.pipeline import RunContext, prepare
from fewclip.world import CLASSES, HELD_OUT, SEEN, SHAPES, COLOURS
from fewclip.world.pretrain import PretrainConfig, caption_corpus, pretrain
from fewclip.world.render import DOMAINS, image_rng, render
from fewclip.world.tokenizer import train_bpe, write_clip_tokenizer


def test_the_world_has_64_classes_and_held_out_combinations_of_seen_parts() -> None:
    assert len(CLASSES) == 64 == len(set(CLASSES))
    assert len(HELD_OUT) == 12 and set(HELD_OUT) <= set(CLASSES) and len(SEEN) == 52
    seen_colours = Counter(name.split()[0] for name in SEEN)
    seen_shapes = Counter(name.split()[1] for name in SEEN)
    assert set(seen_colours) == set(COLOURS) and set(seen_shapes) == set(SHAPES)  # every part is seen somewhere


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_bytes_other_seed_other_bytes(domain: str) -> None:
    first = render_png("blue star", 0, domain, "train", 3, 64)
    assert first == render_png("blue star", 0, domain, "train", 3, 64)
    assert first != render_png("blue star", 1, domain, "train", 3, 64)
    assert first != render_png("blue star", 0, domain, "train", 4, 64)
    image = Image.open(io.BytesIO(first))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_the_shape_is_drawn_in_its_colour() -> None:
    """The class colour dominates the pixels that differ most from the background."""
    for name in ("red circle", "blue square", "green triangle"):
        image, scene = render(name, image_rng(0, "sketch", "train", name, 0), 64, "sketch")
        pixels = np.asarray(image).reshape(-1, 3).astype(float)
        saturated = pixels[(pixels.max(1) - pixels.min(1)) > 80]
        assert len(saturated) > 20
        channel = {"red": 0, "green": 1, "blue": 2}[scene.colour]
        assert np.argmax(saturated.mean(0)) == channel


def test_unknown_world_class_fails_listing_the_valid_names(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(dataset={"source": "world", "classes": ["red circle", "mauve blob"]})
    message = str(error.value)
    assert "mauve blob" in message and "red circle" in message and "pink ring" in message


def test_world_source_exports_balanced_classes_through_prepare(make_config: Callable[..., Any]) -> None:
    names = ["red circle", "blue star", "green ring"]
    config = make_config(
        dataset={
            "source": "world",
            "classes": names,
            "train_per_class": 9,
            "test_per_class": 5,
            "image_size": 32,
            "test_domain": "sketch",
        }
    )
    prepare(RunContext(config))
    layout = RunContext(config).layout
    train, test = read_csv(layout.train_full), read_csv(layout.test)
    assert Counter(r["class_name"] for r in train) == {n: 9 for n in names}
    assert Counter(r["class_name"] for r in test) == {n: 5 for n in names}
    first = layout.data / train[0]["path"]
    assert Image.open(first).size == (32, 32)
    assert "sketch" not in train[0]["path"]
    assert {Path(r["path"]).parts[1] for r in test} == {"test"}


def test_tokenizer_is_in_clip_layout_and_keeps_words_whole(tmp_path: Path) -> None:
    merges = train_bpe(caption_corpus(), 200)
    size = write_clip_tokenizer(tmp_path, merges, 32)
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.bos_token_id == size - 2 and tokenizer.eos_token_id == size - 1
    assert tokenizer.convert_ids_to_tokens(list(range(3))) == ["!", '"', "#"]  # 256 byte symbols first
    for word in ("purple", "hexagon", "triangle", "a"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert len(tokenizer("zebra", add_special_tokens=False)["input_ids"]) > 1  # unseen words split


def test_short_pretraining_runs_end_to_end_and_lowers_the_loss(tmp_path: Path) -> None:
    config = PretrainConfig(
        minutes=0.3,
        images_per_class=6,
        batch_size=64,
        width=32,
        layers=1,
        heads=2,
        image_size=32,
        eval_per_class=2,
        workers=1,
        lr=3e-3,
        warmup_fraction=0.02,
    )
    results = pretrain(config, tmp_path / "model", log=lambda line: None)
    assert results["steps"] >= 10
    assert results["final_loss"] < results["first_loss"] - 0.1
    from fewclip.backbones import ModelConfig, load_backbone

    backbone = load_backbone(ModelConfig(id=str(tmp_path / "model")))  # the same path as a hub id
    assert next(backbone.model.parameters()).dtype == torch.float32
    assert backbone.transform.crop == (32, 32)


def test_logged_rate_counts_the_time_the_steps_took(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 1's rate is its pairs over the time up to the end of that step (it read ~0 s before: absurd rates)."""
    import fewclip.world.pretrain as module

    class Clock:  # every reading of the clock is 0.5 s later than the one before
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 0.5
            return cls.now

    monkeypatch.setattr(module, "time", Clock)
    lines: list[str] = []
    config = PretrainConfig(
        steps=1,
        images_per_class=2,
        batch_size=8,
        width=32,
        layers=1,
        heads=2,
        image_size=32,
        eval_per_class=1,
        workers=1,
    )
    pretrain(config, tmp_path / "model", log=lines.append)
    (step_line,) = [line for line in lines if line.startswith("step ")]
    # clock readings from the start of training: the loop's check (+0.5 s), then after the step (+1.0 s)
    assert step_line.endswith(f"{8 / 1.0:.0f} pairs/s"), step_line
