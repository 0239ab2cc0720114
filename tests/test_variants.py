"""Named variants: `coop@n4` is the coop head with its own block, run and reported beside `coop`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip.runner import pipeline
from fewclip.runner.config import ConfigError
from fewclip.heads import read_head_meta
from fewclip.runner.layout import RunLayout
from fewclip.runner.predict import load_classifier
from fewclip.report.missing import missing_units
from fewclip.runner.run_context import head_class, head_config

VARIANT = (
    "methods=[coop,coop@n4]",
    "variants.coop@n4.n_ctx=4",
    "coop.epochs=1",
    "few_shot.shots=[1]",
    "output.saliency_images=0",
)


def test_variant_block_overrides_its_base_block(make_config: Callable[..., Any]) -> None:
    config = make_config(*VARIANT, "coop.lr=0.01")
    assert head_class("coop@n4") is head_class("coop")
    coop, n4 = head_config(config, "coop"), head_config(config, "coop@n4")
    assert (coop.n_ctx, n4.n_ctx) == (16, 4)
    assert n4.lr == coop.lr == 0.01 and n4.epochs == 1  # everything else comes from the coop block


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("methods=[coop@n4]",), "methods lists 'coop@n4' but variants has no block for it"),
        (("methods=[coop@n4]", "variants.coop@n4.nctx=4"), "coop@n4.nctx: unknown key (valid keys: n_ctx,"),
        (("variants.coop@n4.n_ctx=0",), "coop@n4.n_ctx: Input should be greater than or equal to 1"),
        (("variants.cop@x.n_ctx=2",), "'cop@x': a variant is named <head>@<label> with a registered head"),
        (("methods=[coop@a.b]",), "method 'coop@a.b': a variant is named <head>@<label>"),
        (("methods=[coop,coop]",), "methods listed twice"),
    ],
)
def test_bad_variants_are_refused_with_the_key(
    overrides: tuple[str, ...], message: str, make_config: Callable[..., Any]
) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert message in str(err.value)


def test_coop_and_a_variant_train_side_by_side(make_config: Callable[..., Any]) -> None:
    config = make_config(*VARIANT)
    pipeline.run(config)
    layout = RunLayout(Path(config.output.dir))
    metas = {m: read_head_meta(layout.heads / m / "shot_1-seed_1") for m in ("coop", "coop@n4")}
    assert metas["coop"]["head"] == metas["coop@n4"]["head"] == "coop"
    assert (metas["coop"]["config"]["n_ctx"], metas["coop@n4"]["config"]["n_ctx"]) == (16, 4)
    with open(layout.summary, newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"coop", "coop@n4"}
    assert int(rows["coop"]["trainable_params"]) == 4 * int(rows["coop@n4"]["trainable_params"])  # 16 vs 4 tokens
    assert missing_units(config, list(rows.values())) == []
    assert "coop@n4" in layout.report.read_text()
    classifier = load_classifier(layout.root, method="coop@n4")
    assert classifier.method == "coop@n4" and classifier.head.config.n_ctx == 4
