"""Config files and values that used to give a silently wrong experiment, a hang or an unclear message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from fewclip.runner.config import ConfigError, load_config


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _dataset_lines(tmp_path: Path) -> str:
    return f"dataset:\n  source: folder\n  path: {tmp_path}\ncache:\n  dir: {tmp_path / 'cache'}\n"


def test_a_repeated_key_names_the_key_the_lines_and_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "training:\n  epochs: 3\n" + _dataset_lines(tmp_path) + "training:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key 'training' appears twice in one block (lines 1 and 8)")
    assert "merge them into one" in message


def test_a_repeated_key_inside_a_block_is_refused_too(tmp_path: Path) -> None:
    path = _write(tmp_path, _dataset_lines(tmp_path) + "coop:\n  n_ctx: 4\n  lr: 0.1\n  n_ctx: 8\n")
    with pytest.raises(ConfigError, match=r"key 'n_ctx' appears twice in one block \(lines 7 and 9\)"):
        load_config(path)


def test_an_alias_bomb_fails_at_once(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("name: *a9")  # 9**10 strings once expanded: safe_load shares them, validation and repr did not
    path = _write(tmp_path, "\n".join(lines) + "\n" + _dataset_lines(tmp_path))
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - start < 5
    assert f"{path}: the YAML expands to more than 100,000 values through aliases" in str(info.value)


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "methods: &m [zero_shot, *m]\n" + _dataset_lines(tmp_path))
    with pytest.raises(ConfigError, match="an alias refers to a block that contains it"):
        load_config(path)


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    path = _write(tmp_path, _dataset_lines(tmp_path) + "splits:\n  seeds: &s [1, 2]\nfew_shot:\n  shots: *s\n")
    config = load_config(path)
    assert config.splits.seeds == [1, 2] and config.few_shot.shots == [1, 2]


def test_a_config_that_is_not_utf8_names_the_file_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    text = "name: caf\xe9\n" + _dataset_lines(tmp_path)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not UTF-8 text (byte 0xe9 at offset 9); save the file as UTF-8")


def test_a_config_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "excel.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + ("name: bom\n" + _dataset_lines(tmp_path)).encode())
    assert load_config(path).name == "bom"


def test_invalid_yaml_still_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_config(path)


def test_repeated_seeds_fail(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("splits.seeds=[1,2,1]")
    assert "splits.seeds: seed(s) [1] listed more than once; each seed is one split" in str(info.value)


def test_no_methods_fails(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("methods=[]")
    assert "methods: empty; list at least one method to run (registered: " in str(info.value)
    assert "zero_shot" in str(info.value)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_output_dir_fails(make_config, value: str) -> None:
    with pytest.raises(ConfigError, match=r"output\.dir: empty; name the run directory"):
        make_config(f"output.dir={value}")


def test_messages_have_no_pydantic_prefix_and_name_the_value_once(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("few_shot.shots=[0]")
    message = str(info.value)
    assert "Value error" not in message
    assert message.endswith("few_shot.shots: shots must be >= 1, got [0]")


def test_a_type_error_still_shows_the_value(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("splits.val_per_class=many")
    assert str(info.value).endswith("(got 'many')")
    assert yaml.safe_load("a: 1") == {"a": 1}  # the global loader is untouched
