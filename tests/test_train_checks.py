"""The train stage's up-front checks: bad prompts fail before any unit trains, and a re-run with every
head trained does not load CLIP for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

import fewclip.runner.run_context
from fewclip.runner import pipeline
from fewclip.runner.run_context import RunContext

LONG_NAME = "red circle " * 5 + "in a very long name"  # far over the tiny CLIP's 32 text positions


@pytest.fixture()
def backbone_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every backbone load the run context makes (the load itself still happens)."""
    loads: list[str] = []
    original = fewclip.runner.run_context.load_backbone

    def recording(config: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(config.id)
        return original(config, *args, **kwargs)

    monkeypatch.setattr(fewclip.runner.run_context, "load_backbone", recording)
    return loads


def prepared(config: Any) -> RunContext:
    ctx = RunContext(config)
    pipeline.prepare(ctx)
    pipeline.features(ctx)
    return RunContext(config)  # a fresh context: nothing loaded yet


def test_fully_trained_rerun_with_coop_does_not_load_clip(
    make_config: Callable[..., Any], backbone_loads: list[str]
) -> None:
    config = make_config("methods=[zero_shot, linear_probe, coop]", "few_shot.shots=[1]", "coop.epochs=1")
    ctx = prepared(config)
    assert len(pipeline.train(ctx)) == 3
    backbone_loads.clear()

    assert pipeline.train(RunContext(config)) == []
    assert backbone_loads == []  # the prompt checks need the tokenizer only when something is left to train

    changed = config.model_copy(update={"coop": config.coop.model_copy(update={"epochs": 2})})
    retrained = pipeline.train(RunContext(changed))
    assert len(retrained) == 1 and "coop" in retrained[0]
    assert len(backbone_loads) == 1  # coop retrains: its prompts are checked (and it trains) with the model


def folder_with_long_name(shapes_dir: Path, raw: str = "red_circle") -> dict[str, Any]:
    return {"source": "folder", "path": str(shapes_dir), "rename": {raw: LONG_NAME}}


def test_a_prompt_too_long_fails_before_any_unit_trains(make_config: Callable[..., Any], shapes_dir: Path) -> None:
    config = make_config(
        "methods=[linear_probe, zero_shot]", "few_shot.shots=[1]", dataset=folder_with_long_name(shapes_dir)
    )
    ctx = prepared(config)
    with pytest.raises(ValueError, match=rf"(?s)^zero_shot: .* with class {LONG_NAME!r}"):
        pipeline.train(ctx)
    assert not list(ctx.layout.heads.rglob("*.json"))  # the linear probe, listed first, did not train either


def test_new_classes_of_base_to_new_are_checked_before_training(
    make_config: Callable[..., Any], shapes_dir: Path
) -> None:
    """The zero-shot head trains on the base classes only; the long name is a new class met at evaluation."""
    config = make_config(
        "methods=[zero_shot]", "splits.subsample=base2new", dataset=folder_with_long_name(shapes_dir, "red_circle")
    )
    ctx = prepared(config)
    classes = ctx.layout.data / "classes.json"
    assert LONG_NAME in classes.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=rf"with class {LONG_NAME!r}"):
        pipeline.train(ctx)
    assert not list(ctx.layout.heads.rglob("*.json"))
