"""A trained CoOp unit is retrained when its learning rates change and kept when ``coop.schedule`` changes
nothing it trains with (the pipeline hashes ``ConfigBlock.key_values``, not the raw block)."""

from __future__ import annotations

from typing import Any, Callable

from fewclip.runner import pipeline


def train(make_config: Callable[..., Any], *overrides: str) -> list[str]:
    ctx = pipeline.RunContext(
        make_config("methods=[coop]", "few_shot.shots=[1]", "coop.n_ctx=2", "coop.batch_size=4", *overrides)
    )
    pipeline.prepare(ctx)
    pipeline.features(ctx)
    return pipeline.train(ctx)


def test_schedule_retrains_only_units_whose_rates_change(make_config: Callable[..., Any]) -> None:
    unit = ["coop/shot_1-seed_1"]
    assert train(make_config, "coop.epochs=2", "coop.schedule=fewclip") == unit
    assert train(make_config, "coop.epochs=2") == []  # dassl: 2 epochs train at the same rates
    assert train(make_config, "coop.epochs=3", "coop.schedule=fewclip") == unit
    assert train(make_config, "coop.epochs=3", "coop.schedule=fewclip") == []
    assert train(make_config, "coop.epochs=3") == unit  # dassl: the third epoch's rate differs
