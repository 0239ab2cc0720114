"""fewclip.runner.config: defaults, strict keys with suggestions, typed errors, dotted overrides, YAML round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fewclip.runner.config import DEFAULT_TEMPLATES, Config, ConfigError, load_config, parse_override
from fewclip.heads import list_heads

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
SHIPPED_CONFIGS = sorted(
    p
    for p in CONFIGS_DIR.glob("**/*.yaml")  # configs/coop_suite/ too
    if not p.name.endswith("_caption.yaml")
)  # captioning configs: tests/caption


def _minimal(tmp_path: Path) -> dict:
    """The smallest valid config: only the required dataset block."""
    return {"dataset": {"source": "folder", "path": str(tmp_path)}, "cache": {"dir": str(tmp_path / "cache")}}


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_come_from_the_blocks(make_config) -> None:
    config = make_config()
    assert config.coop.n_ctx == 16
    assert config.coop.lr == 0.002
    assert config.coop.precision == "fp32"
    assert config.model.precision == "fp32"
    assert config.prompts.templates == DEFAULT_TEMPLATES
    assert config.methods == ["zero_shot", "linear_probe"]  # the fixture names them
    assert Config.model_fields["methods"].default_factory() == ["zero_shot", "linear_probe", "coop"]
    assert config.linear_probe.epochs == 20  # the fixture's override of the block default
    assert config.wandb.mode == "disabled"


def test_untouched_blocks_equal_fresh_defaults(tmp_path: Path) -> None:
    config = load_config(None, base=_minimal(tmp_path))
    assert config.few_shot.shots == [1, 2, 4, 8, 16]
    assert config.splits.seeds == [1, 2, 3]
    assert config.splits.val_per_class == 4
    assert config.linear_probe == type(config.linear_probe)()
    assert config.coop == type(config.coop)()


def test_shots_are_sorted_and_deduplicated(make_config) -> None:
    assert make_config("few_shot.shots=[16,1,4,4]").few_shot.shots == [1, 4, 16]


def test_shots_below_one_fail(make_config) -> None:
    with pytest.raises(ConfigError, match=r"few_shot\.shots.*>= 1"):
        make_config("few_shot.shots=[0,2]")


def test_base_dict_is_not_mutated_by_overrides(tmp_path: Path) -> None:
    base = _minimal(tmp_path)
    base["few_shot"] = {"shots": [1]}
    before = copy.deepcopy(base)
    load_config(None, ["few_shot.shots=[2]", "dataset.test_fraction=0.5"], base=base)
    assert base == before


# --- unknown keys --------------------------------------------------------------------------------


def test_unknown_key_names_it_and_the_closest_valid_one(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("few_shot.shot=[8]")
    message = str(info.value)
    assert "few_shot.shot:" in message
    assert "'few_shot.shots'" in message


def test_unknown_key_in_dataset_block_uses_the_sources_keys(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("dataset.pth=/data")
    message = str(info.value)
    assert "dataset.pth" in message
    assert "'dataset.path'" in message
    assert "test_fraction" in message  # a folder-source key, listed among the valid ones


def test_unknown_key_in_hf_dataset_block_suggests_an_hf_key(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(dataset={"source": "hf", "id": "ethz/food101", "image_colum": "img"})
    message = str(info.value)
    assert "dataset.image_colum" in message
    assert "'dataset.image_column'" in message
    assert "train_dir" not in message  # the folder source's keys are not offered for an hf dataset


def test_unknown_source_lists_the_registered_ones(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(dataset={"source": "fodler", "path": "/data"})
    message = str(info.value)
    assert "'fodler'" in message
    for name in ("hf", "folder", "csv"):
        assert name in message


def test_unknown_key_in_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    data = _minimal(tmp_path)
    data["coop"] = {"n_ctxx": 4}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "coop.n_ctxx" in message
    assert "'coop.n_ctx'" in message


def test_unknown_top_level_block(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["trainng.epochs=3"], base=_minimal(tmp_path))
    assert "trainng" in str(info.value)
    assert "did you mean 'linear_probe'" in str(info.value)


def test_missing_dataset_block_fails(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"no `dataset` block") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# --- types ---------------------------------------------------------------------------------------


def test_wrong_type_names_the_key_and_the_value(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("training.epochs=ten")
    message = str(info.value)
    assert "training.epochs" in message
    assert "integer" in message
    assert "'ten'" in message


def test_wrong_literal_lists_what_is_allowed(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("model.precision=fp8")
    message = str(info.value)
    assert "model.precision" in message
    assert "'fp8'" in message
    for allowed in ("fp32", "bf16", "fp16"):
        assert allowed in message


def test_every_error_is_reported_at_once(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("training.epochs=ten", "few_shot.shot=[8]")
    assert "training.epochs" in str(info.value)
    assert "few_shot.shot" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key", "shown"),
    [
        ("few_shot.shots=[true]", "few_shot.shots", "true"),
        ("few_shot.shots=[2.0]", "few_shot.shots", "2.0"),
        ("splits.seeds=[1.5]", "splits.seeds", "1.5"),
        ("splits.val_per_class=false", "splits.val_per_class", "false"),
        ("linear_probe.epochs=true", "linear_probe.epochs", "true"),
        ("coop.epochs={1: true}", "coop.epochs", "true"),
        ("model.batch_size=32.0", "model.batch_size", "32.0"),
        ("linear_probe.lr=true", "linear_probe.lr", "true"),
    ],
)
def test_a_bool_or_a_fraction_is_no_count(make_config, override: str, key: str, shown: str) -> None:
    # pydantic's lax mode reads true as 1 and 2.0 as 2: a count written as a flag or a decimal is refused
    with pytest.raises(ConfigError) as info:
        make_config(override)
    line = next(line for line in str(info.value).splitlines() if key in line)
    assert shown in line and ("whole number" in line or "a number" in line), line


def test_counts_and_rates_keep_their_ordinary_spellings(make_config) -> None:
    config = make_config(
        "few_shot.shots=[1, 2]",
        "coop.epochs={1: 5, 4: 10}",
        "linear_probe.lr=1",
        "coop.lr=2e-3",
        "model.batch_size=8",
        "output.saliency_images=0",
    )
    assert (config.few_shot.shots, config.coop.epochs, config.linear_probe.lr) == ([1, 2], {1: 5, 4: 10}, 1.0)
    assert config.coop.lr == pytest.approx(0.002) and config.model.batch_size == 8


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_parse_lists_and_numbers(make_config) -> None:
    config = make_config("few_shot.shots=[8,16]", "training.lr=0.5", "splits.seeds=[4]", "coop.n_ctx=4")
    assert config.few_shot.shots == [8, 16]
    assert config.linear_probe.lr == 0.5
    assert config.splits.seeds == [4]
    assert config.coop.n_ctx == 4


def test_override_in_scientific_notation(make_config) -> None:
    assert make_config("training.lr=1e-3").linear_probe.lr == pytest.approx(0.001)  # the deprecated name still works


def test_override_booleans_and_null(make_config) -> None:
    config = make_config("few_shot.allow_fewer=true", "coop.ctx_init=null")
    assert config.few_shot.allow_fewer is True
    assert config.coop.ctx_init is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("prompts.templates=a photo of a {}.", "a photo of a {}."),
        ("x.y={}", "{}"),
        ("x.y={} photo", "{} photo"),
        ("x.y=[8,16]", [8, 16]),
        ("x.y=0.5", 0.5),
        ("x.y=a=b", "a=b"),
    ],
)
def test_parse_override_values(text: str, value: object) -> None:
    assert parse_override(text)[1] == value


def test_template_list_override_keeps_slots_as_text(make_config) -> None:
    config = make_config("prompts.templates=['a photo of a {}.', 'art of the {}']")
    assert config.prompts.templates == ["a photo of a {}.", "art of the {}"]


def test_unquoted_template_list_override(make_config) -> None:
    config = make_config("prompts.templates=[a photo of a {}., a sketch of a {}]")
    assert config.prompts.templates == ["a photo of a {}.", "a sketch of a {}"]


@pytest.mark.parametrize("text", ["few_shot.shots", "=3", "few_shot..shots=3"])
def test_malformed_override_fails(text: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_override_into_a_value_fails(make_config) -> None:
    with pytest.raises(ConfigError, match=r"few_shot\.shots is a value, not a block"):
        make_config("few_shot.shots.first=1")


# --- validators ----------------------------------------------------------------------------------


def test_unknown_method_suggests_the_closest(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("methods=[zero_shot, linaer_probe]")
    message = str(info.value)
    assert "'linaer_probe'" in message
    assert "did you mean 'linear_probe'" in message
    for name in list_heads():
        assert name in message


def test_method_listed_twice_fails(make_config) -> None:
    with pytest.raises(ConfigError, match="twice"):
        make_config("methods=[zero_shot, zero_shot]")


@pytest.mark.parametrize("template", ["a photo of a cat", "{} and {}"])
def test_template_needs_exactly_one_slot(make_config, template: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(prompts={"templates": [template]})
    message = str(info.value)
    assert "prompts.templates" in message
    assert repr(template) in message


@pytest.mark.parametrize(
    "template, problem",
    [
        ("a {other} photo of a {}.", "has the field(s) {other}, which no value fills"),
        ("a photo of {0}.", "has the field(s) {0}, which no value fills"),
        ("a photo of a {}.}", "Single '}' encountered in format string"),
        ("a {photo of a {}.", "unexpected '{' in field name"),
        ("a photo of a {", "Single '{' encountered in format string"),
        ("a photo of a {!r}.", "the class slot takes no format spec or conversion"),
        ("a photo of a {:>10}.", "the class slot takes no format spec or conversion"),
    ],
)
def test_template_with_stray_braces_or_other_fields_fails_at_load(make_config, template: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(prompts={"templates": ["a photo of a {}.", template]})
    message = str(info.value)
    assert "prompts.templates" in message and f"template {template!r}" in message  # the template quoted
    assert problem in message
    assert "use one '{}' where the class name goes; write a literal brace as '{{' or '}}'" in message


def test_template_with_escaped_braces_is_valid(make_config) -> None:
    template = "a photo of a {} {{in braces}}."
    config = make_config(prompts={"templates": [template]})
    assert config.prompts.templates == [template]
    assert template.format("cat") == "a photo of a cat {in braces}."


# --- paths in a config file ----------------------------------------------------------------------


def _write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_relative_paths_in_a_yaml_are_read_from_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    for folder in ("imgs", "other", "csvroot"):
        (project / folder).mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        (project / name).write_text("path,label\n", encoding="utf-8")
    folder_yaml = _write_yaml(
        project / "folder.yaml",
        {
            "dataset": {
                "source": "folder",
                "path": "imgs",
                "eval_on": [{"source": "folder", "path": "other", "label": "other"}],
            }
        },
    )
    csv_yaml = _write_yaml(
        project / "csv.yaml",
        {"dataset": {"source": "csv", "train": "train.csv", "test": "./test.csv", "root": "csvroot"}},
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the YAML's folder
    dataset = load_config(folder_yaml).dataset
    assert (dataset.path, dataset.eval_on[0].path) == (str(project / "imgs"), str(project / "other"))
    dataset = load_config(csv_yaml).dataset
    assert (dataset.train, dataset.test, dataset.root) == (
        str(project / "train.csv"),
        str(project / "test.csv"),
        str(project / "csvroot"),
    )
    assert load_config(folder_yaml).output.dir == "runs/default"  # outputs stay relative to the working directory


def test_a_yaml_path_missing_beside_it_is_read_from_the_working_directory_and_overrides_only_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = _write_yaml(tmp_path / "configs" / "a.yaml", {"dataset": {"source": "folder", "path": "data"}})
    (tmp_path / "configs" / "imgs").mkdir()  # beside the YAML, but an override names the working directory's
    for folder in ("data", "imgs"):
        (tmp_path / "project" / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")  # a config run from its project root, as before
    assert load_config(config_file).dataset.path == str(tmp_path / "project" / "data")
    assert load_config(config_file, ["dataset.path=imgs"]).dataset.path == str(tmp_path / "project" / "imgs")
    assert load_config(config_file, ["dataset.path=nowhere"]).dataset.path == "nowhere"  # the check names it


# --- serialisation -------------------------------------------------------------------------------


def test_to_yaml_round_trips(make_config, tmp_path: Path) -> None:
    config = make_config(
        "few_shot.shots=[2,8]",
        "coop.ctx_init=a photo of a",
        "model.precision=bf16",
        prompts={"templates": ["a {} here"]},
        dataset={"source": "hf", "id": "x/y", "classes": ["b", "a"]},
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    again = load_config(path)
    assert again == config
    assert again.dataset.classes == ["b", "a"]
    assert isinstance(again, Config)


# --- shipped configs -----------------------------------------------------------------------------


def test_configs_folder_holds_yaml_when_not_empty() -> None:
    """An empty configs/ parametrizes nothing below (pytest reports it); a non-empty one must hold YAML."""
    entries = [p for p in CONFIGS_DIR.iterdir() if not p.name.startswith(".")] if CONFIGS_DIR.is_dir() else []
    if entries:
        assert SHIPPED_CONFIGS, f"{CONFIGS_DIR} has files but no *.yaml: {[p.name for p in entries]}"
    else:
        assert not SHIPPED_CONFIGS


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=[p.relative_to(CONFIGS_DIR).as_posix() for p in SHIPPED_CONFIGS])
def test_shipped_config_loads(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    assert config.dataset.source == yaml.safe_load(path.read_text(encoding="utf-8"))["dataset"]["source"]
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config.to_yaml(), encoding="utf-8")
    assert load_config(resolved) == config
