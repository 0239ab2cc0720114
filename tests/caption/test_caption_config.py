"""fewclip.runner.caption_config: defaults from the blocks, strict keys with suggestions, overrides, shipped caption configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fewclip.runner.caption_config import CaptionConfig, load_caption_config
from fewclip.caption.data import CaptionDataConfig
from fewclip.runner.captioning import embedded_caption_config
from fewclip.caption.model import CaptionModelConfig
from fewclip.caption.train import CaptionTrainConfig
from fewclip.runner.config import ConfigError

CAPTION_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*_caption.yaml"))


def test_untouched_blocks_equal_their_defaults(tmp_path: Path) -> None:
    config = load_caption_config(None, [f"cache.dir={tmp_path}"])
    assert config.methods == ["adapter", "prefix", "lora"] and config.seeds == [0]
    assert config.model == CaptionModelConfig() and config.data == CaptionDataConfig()
    assert config.training == CaptionTrainConfig() and config.training.lr == 1e-4 and config.training.epochs == 10
    assert config.clipscore_model is None


def test_unit_model_sets_the_method_and_the_attention_layer(world_caption_config) -> None:
    config = world_caption_config("attention.layer=0")
    unit = config.unit_model("lora")
    assert (unit.method, unit.attention_layer, unit.prefix_length) == ("lora", 0, 4)
    assert config.units() == [("untrained", 0), ("adapter", 0), ("prefix", 0), ("lora", 0)]


def test_unknown_key_names_the_nearest_valid_one(world_caption_config) -> None:
    with pytest.raises(ConfigError) as err:
        world_caption_config("training.learning_rate=0.1", "model.lora_rnk=4")
    message = str(err.value)
    assert "training.learning_rate: unknown key" in message
    assert "model.lora_rnk: unknown key; did you mean 'model.lora_rank'?" in message


def test_untrained_is_not_listed_and_unknown_methods_are_named(world_caption_config) -> None:
    with pytest.raises(ConfigError, match="'untrained' is the baseline, evaluated in every run"):
        world_caption_config("methods=[untrained,lora]")
    with pytest.raises(ConfigError, match=r"unknown caption method 'lorra' \(did you mean 'lora'\?\)"):
        world_caption_config("methods=[lorra]")


def test_a_value_has_one_place(world_caption_config) -> None:
    with pytest.raises(ConfigError, match="model.method is set per unit from `methods`"):
        world_caption_config("model.method=lora")
    with pytest.raises(ConfigError, match="set attention.layer instead"):
        world_caption_config("model.attention_layer=0")


def test_data_errors_name_the_key(world_caption_config) -> None:
    with pytest.raises(ConfigError, match=r"source 'coco' needs captions and image_dir"):
        world_caption_config("data.source=coco")


def test_yaml_round_trip_and_relative_paths(world_caption_config, tmp_path: Path) -> None:
    config = world_caption_config("decode.beam_size=3")
    folder = tmp_path / "configs"
    (folder / "my-decoder").mkdir(parents=True)
    data = yaml.safe_load(config.to_yaml())
    data["model"]["decoder"] = "my-decoder"  # a folder beside the YAML
    path = folder / "caption.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    loaded = load_caption_config(path)
    assert loaded.model.decoder == str((folder / "my-decoder").resolve())
    assert loaded.model_copy(update={"model": config.model}) == config


def test_embedded_default_validates(tmp_path: Path) -> None:
    config = load_caption_config(None, base=embedded_caption_config(tmp_path))
    assert config.model.encoder == "fewclip/world-clip" and config.model.decoder == "fewclip/world-decoder"
    assert config.methods == ["adapter", "prefix", "lora"] and config.data.source == "world"
    assert config.data.world_captions_per_image > 1  # several references per image


@pytest.mark.parametrize("path", CAPTION_CONFIGS, ids=[p.name for p in CAPTION_CONFIGS])
def test_shipped_caption_config_loads(path: Path, tmp_path: Path) -> None:
    config = load_caption_config(path)
    assert isinstance(config, CaptionConfig)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config.to_yaml(), encoding="utf-8")
    assert load_caption_config(resolved) == config


def test_the_coco_config_names_real_hub_ids() -> None:
    assert [p.name for p in CAPTION_CONFIGS] == ["coco_caption.yaml"]
    config = load_caption_config(CAPTION_CONFIGS[0])
    assert (config.model.encoder, config.model.decoder) == ("openai/clip-vit-large-patch14-336", "gpt2")
    assert (config.data.source, config.data.id, config.data.caption_column) == (
        "hf",
        "lmms-lab/COCO-Caption2017",
        "answer",
    )
    assert "NEEDS INTERNET" in CAPTION_CONFIGS[0].read_text(encoding="utf-8")


@pytest.mark.parametrize("decoder", ["gpt2-nonexist", "./decoders/missing"])
def test_a_missing_decoder_suggests_the_shipped_decoder_not_a_clip(world_caption_config, decoder: str) -> None:
    from fewclip.runner.captioning import check_models

    config = world_caption_config(f"model.decoder={decoder}")
    with pytest.raises(OSError) as err:
        check_models(config)
    message = str(err.value)
    assert message.startswith("model.decoder: ") and "model.id" not in message
    assert "'fewclip/world-decoder'" in message and "world-clip" not in message and "CLIP" not in message
