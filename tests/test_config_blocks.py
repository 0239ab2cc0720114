"""Method blocks come from the head registry; `training:` is the deprecated name of `linear_probe:`;
a prompt learner's n_ctx is resolved once, where the config is read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, ClassVar

import pytest
import yaml

import fewclip.runner.config
from fewclip.runner.config import ConfigError, build_config_class, load_config
from fewclip.configbase import ConfigBlock
from fewclip.heads import HEADS, list_heads
from fewclip.registry import Registry
from fewclip.runner.run_context import head_config


# --- blocks from the registry --------------------------------------------------------------------


def test_every_registered_head_with_hyperparameters_has_its_block(make_config: Callable[..., Any]) -> None:
    config = make_config()
    for name in list_heads():
        head_cls = HEADS.get(name)
        if head_cls.config_key is not None:
            assert type(getattr(config, head_cls.config_key)) is head_cls.Config
    assert "linear_probe" in type(config).model_fields and "training" not in type(config).model_fields


def test_a_newly_registered_head_gets_its_block_without_touching_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class MyConfig(ConfigBlock):
        alpha: float = 1.0

    class MyHead:
        name: ClassVar[str] = "my_head"
        config_key: ClassVar[str | None] = "my_head"
        Config = MyConfig

    registry: Registry[type] = Registry("head")
    for name in list_heads():
        registry.register(name, HEADS.get(name))
    registry.register("my_head", MyHead)
    monkeypatch.setattr(fewclip.runner.config, "HEADS", registry)
    monkeypatch.setattr(fewclip.runner.config, "list_heads", registry.names)
    config_cls = build_config_class()
    dataset = {"source": "folder", "path": str(tmp_path)}
    config = config_cls.model_validate({"dataset": dataset, "methods": ["my_head"], "my_head": {"alpha": 0.5}})
    assert config.my_head == MyConfig(alpha=0.5)
    assert list(config_cls.model_fields)[-6:] == ["my_head", "wandb", "output", "cache", "runtime", "variants"]
    with pytest.raises(Exception, match="alpah"):
        config_cls.model_validate({"dataset": dataset, "my_head": {"alpah": 0.5}})


def test_two_heads_claiming_one_block_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    registry: Registry[type] = Registry("head")
    registry.register("coop", HEADS.get("coop"))
    registry.register("coop_again", type("Again", (), {"config_key": "coop", "Config": ConfigBlock}))
    monkeypatch.setattr(fewclip.runner.config, "HEADS", registry)
    monkeypatch.setattr(fewclip.runner.config, "list_heads", registry.names)
    with pytest.raises(ValueError, match="heads 'coop' and 'coop_again' both claim the config block 'coop'"):
        build_config_class()


# --- training: -> linear_probe: --------------------------------------------------------------------


@pytest.fixture()
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fewclip.runner.config, "_warned", set())


def _write(tmp_path: Path, blocks: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"source": "folder", "path": str(tmp_path)}, **blocks}))
    return path


def test_training_block_is_read_as_linear_probe_and_warned_about_once(
    tmp_path: Path, fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, {"training": {"epochs": 7, "lr": 0.5}})
    with caplog.at_level(logging.WARNING, logger="fewclip.runner.config"):
        first = load_config(path)
        second = load_config(path, ["training.batch_size=4"])
    assert (first.linear_probe.epochs, first.linear_probe.lr) == (7, 0.5)
    assert (second.linear_probe.epochs, second.linear_probe.batch_size) == (7, 4)
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == ["training: is deprecated, use linear_probe: (the same keys)"]
    assert (
        "training" not in yaml.safe_load(first.to_yaml())
        and yaml.safe_load(first.to_yaml())["linear_probe"]["epochs"] == 7
    )


def test_training_override_on_a_linear_probe_block_changes_that_block(tmp_path: Path, fresh_warnings: None) -> None:
    config = load_config(_write(tmp_path, {"linear_probe": {"epochs": 7}}), ["training.lr=0.25"])
    assert (config.linear_probe.epochs, config.linear_probe.lr) == (7, 0.25)


def test_training_and_linear_probe_together_are_refused(tmp_path: Path, fresh_warnings: None) -> None:
    path = _write(tmp_path, {"training": {"epochs": 7}, "linear_probe": {"lr": 0.5}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: both `training:` and `linear_probe:` are given; `training` is the deprecated "
        "name of `linear_probe`: merge its keys into `linear_probe:`"
    )


def test_errors_in_a_training_block_name_the_key_as_written(tmp_path: Path, fresh_warnings: None) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, {"training": {"epoch": 7}}))
    assert "training.epoch: unknown key; did you mean 'training.epochs'?" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, {}), ["linear_probe.epoch=3"])
    assert "linear_probe.epoch: unknown key; did you mean 'linear_probe.epochs'?" in str(err.value)


# --- n_ctx resolved once ---------------------------------------------------------------------------


def test_cocoop_n_ctx_conflicting_with_the_default_ctx_init_is_an_error(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("cocoop.n_ctx=8")
    message = str(err.value)
    assert "cocoop: n_ctx 8 conflicts with ctx_init 'a photo of a', whose 4 word(s) are the context" in message
    assert "drop n_ctx to start from these words, or set ctx_init: null to learn 8 randomly" in message


def test_ctx_init_resolves_n_ctx_and_an_agreeing_n_ctx_is_the_same_block(make_config: Callable[..., Any]) -> None:
    default = make_config()
    assert (default.cocoop.n_ctx, default.cocoop.ctx_init) == (4, "a photo of a")
    assert make_config("cocoop.n_ctx=4").cocoop == default.cocoop  # the unit key hashes the block: unchanged
    assert make_config("coop.ctx_init=a photo of the").coop.n_ctx == 4
    assert make_config("coop.ctx_init=a_photo_of", "coop.n_ctx=3").coop.n_ctx == 3
    assert make_config("cocoop.ctx_init=null", "cocoop.n_ctx=8").cocoop.n_ctx == 8  # random init: n_ctx as given
    with pytest.raises(ConfigError, match="coop: n_ctx 16 conflicts with ctx_init 'a photo'"):
        make_config("coop.ctx_init=a photo", "coop.n_ctx=16")


def test_a_variant_changing_ctx_init_lets_n_ctx_follow(make_config: Callable[..., Any]) -> None:
    config = make_config(
        "methods=[cocoop,cocoop@short,cocoop@rand]",
        "variants.cocoop@short.ctx_init=a photo",
        "variants.cocoop@rand.ctx_init=null",
        "variants.cocoop@rand.n_ctx=6",
    )
    assert head_config(config, "cocoop@short").n_ctx == 2
    assert head_config(config, "cocoop@rand").n_ctx == 6
    with pytest.raises(ConfigError, match="cocoop@x: n_ctx 8 conflicts with ctx_init 'a photo of a'"):
        make_config("methods=[cocoop@x]", "variants.cocoop@x.n_ctx=8")


def test_zeros_then_words_keeps_n_ctx_and_needs_room_for_the_words(make_config: Callable[..., Any]) -> None:
    """ProGrad's context: n_ctx vectors ending in ctx_init's words; n_ctx never follows the words."""
    default = make_config().prograd
    assert (default.n_ctx, default.ctx_init, default.ctx_init_mode) == (16, "a photo of a", "zeros_then_words")
    assert make_config("prograd.ctx_init=a photo").prograd.n_ctx == 16
    assert make_config("prograd.n_ctx=4").prograd.n_ctx == 4  # exactly the words: no zeros
    assert make_config("prograd.ctx_init_mode=words").prograd.n_ctx == 4  # CoOp's meaning: the words' count
    with pytest.raises(ConfigError) as err:
        make_config("prograd.n_ctx=3")
    assert (
        "prograd: n_ctx 3 cannot hold ctx_init 'a photo of a' (4 word(s)): with ctx_init_mode zeros_then_words "
        "the context is n_ctx vectors ending in the words; raise n_ctx to at least 4"
    ) in str(err.value)
    config = make_config(
        "prograd.n_ctx=20", "methods=[prograd,prograd@short]", "variants.prograd@short.ctx_init=a photo"
    )
    assert head_config(config, "prograd@short").n_ctx == 20  # the base block's length, not the class default


def test_resolved_config_round_trips_through_yaml(make_config: Callable[..., Any], tmp_path: Path) -> None:
    config = make_config("coop.ctx_init=a photo of the", "methods=[coop,coop@two]", "variants.coop@two.ctx_init=a b")
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    again = load_config(path)
    assert again == config and again.to_yaml() == config.to_yaml()
    assert head_config(again, "coop@two").n_ctx == 2
