"""Where model.id points: the shipped alias, folders (missing ones, relative ones in a YAML config,
transformers 5 processor files) and hub ids offline. No test touches the network."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPImageProcessor, CLIPModel, CLIPProcessor

from fewclip.backbones import ModelConfig, load_backbone, model_source
from fewclip.backbones.hf_clip import load_transform, model_fingerprint
from fewclip.backbones.model_source import WORLD_ALIAS, resolve_model
from fewclip.runner.config import load_config
from fewclip.world import CHECKPOINT


@pytest.fixture()
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """from_pretrained records its calls instead of loading (a failed id must fail before it)."""
    calls: list[tuple[Any, ...]] = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(CLIPModel, "from_pretrained", record)
    return calls


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE unset, and the reachability probe answers 'no network' without opening a socket."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(model_source, "hub_reachable", lambda timeout=2.0: False)


# --- missing folders ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_id",
    [
        "{tmp}/missing",
        "./missing-model",
        "../missing-model",
        "~/fewclip-missing-model",
        "models/sub/missing",
        "existing/missing",
    ],
)
def test_a_missing_folder_says_so(
    model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_loading: list[tuple[Any, ...]]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()  # "existing/missing" looks like a hub id but its first part is a local folder
    model_id = model_id.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_backbone(ModelConfig(id=model_id, device="cpu"))
    message = str(err.value)
    assert message.startswith(f"model.id: model folder {Path(model_id).expanduser()} does not exist")
    assert "Repo id" not in message and WORLD_ALIAS in message
    assert not no_model_loading


# --- offline hub ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "no network"])
def test_offline_hub_id_not_in_the_cache_fails_fast(
    offline: str,
    monkeypatch: pytest.MonkeyPatch,
    no_model_loading: list[tuple[Any, ...]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(model_source, "hub_reachable", lambda timeout=2.0: False)
    start = time.perf_counter()
    with pytest.raises(OSError) as err:
        load_backbone(ModelConfig(id="fewclip-tests/not-cached-clip", device="cpu"))
    assert time.perf_counter() - start < 2
    message = str(err.value)
    reason = "HF_HUB_OFFLINE is set" if offline == "HF_HUB_OFFLINE" else "the hub cannot be reached"
    assert message.startswith(
        f"model.id: 'fewclip-tests/not-cached-clip' is not in the local Hugging Face cache and {reason}"
    )
    assert "local model folder" in message and WORLD_ALIAS in message
    assert not no_model_loading  # no retries: transformers is never asked
    assert capsys.readouterr().err == ""  # and no warnings printed


def test_offline_hub_id_in_the_cache_loads_from_local_files_only(
    no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_source, "in_hub_cache", lambda model_id, revision: True)
    source = resolve_model("openai/clip-vit-base-patch32")
    assert source.location == "openai/clip-vit-base-patch32" and source.local_only


def test_online_hub_id_is_left_to_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_source, "hub_reachable", lambda timeout=2.0: True)
    assert resolve_model("openai/clip-vit-base-patch32") == model_source.ModelSource("openai/clip-vit-base-patch32")


def test_reachability_probe_says_no_for_a_closed_local_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe itself, against a port on this machine that nothing listens on (no network needed)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    model_source.hub_reachable.cache_clear()
    try:
        assert model_source.hub_reachable() is False
    finally:
        model_source.hub_reachable.cache_clear()


# --- the shipped alias ----------------------------------------------------------------------------


def test_world_alias_loads_the_shipped_checkpoint() -> None:
    by_alias = load_backbone(ModelConfig(id=WORLD_ALIAS, device="cpu"))
    by_path = load_backbone(ModelConfig(id=str(CHECKPOINT), device="cpu"))
    expected, actual = by_path.model.state_dict(), by_alias.model.state_dict()
    assert all(np.array_equal(actual[k].numpy(), expected[k].numpy()) for k in expected)
    fingerprint = model_fingerprint(ModelConfig(id=WORLD_ALIAS))
    assert fingerprint is not None
    assert fingerprint["weights_sha256"] == model_fingerprint(ModelConfig(id=str(CHECKPOINT)))["weights_sha256"]


def test_world_alias_works_offline_without_the_hub(no_network: None) -> None:
    assert resolve_model(WORLD_ALIAS) == model_source.ModelSource(str(CHECKPOINT), local_only=True)


# --- transformers 5 processor files ---------------------------------------------------------------


def test_folder_saved_by_transformers_5_loads_its_image_processor(tiny_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "saved-by-v5"
    shutil.copytree(tiny_clip, folder)
    (folder / "preprocessor_config.json").unlink()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 34})
    CLIPProcessor(
        image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(str(tiny_clip))
    ).save_pretrained(folder)
    assert (folder / "processor_config.json").is_file()
    assert not (folder / "preprocessor_config.json").exists()  # transformers 5 writes only processor_config.json

    transform = load_transform(ModelConfig(id=str(folder)))
    reference = AutoImageProcessor.from_pretrained(str(folder))  # what transformers itself loads from that folder
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8))
    expected = reference(images=image, return_tensors="np")["pixel_values"][0]
    assert transform(image).shape == expected.shape == (3, 36, 34)
    np.testing.assert_allclose(transform(image), expected, rtol=0, atol=1e-5)
    assert load_backbone(ModelConfig(id=str(folder), device="cpu")).transform == transform


def test_folder_without_any_image_processor_names_both_files(tiny_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-processor"
    shutil.copytree(tiny_clip, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(
        FileNotFoundError,
        match="neither preprocessor_config.json nor an image_processor entry in processor_config.json",
    ):
        load_transform(ModelConfig(id=str(folder)))


# --- relative model.id in a YAML config -----------------------------------------------------------


def write_config(folder: Path, model_id: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump({"model": {"id": model_id}, "dataset": {"source": "folder", "path": "data"}}))
    return path


def test_relative_model_id_is_read_from_the_config_folder(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_clip, tmp_path / "project" / "models" / "tiny")
    config_file = write_config(tmp_path / "project" / "configs", "../models/tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(config_file)
    assert config.model.id == str((tmp_path / "project" / "models" / "tiny").resolve())
    assert load_backbone(config.model.model_copy(update={"device": "cpu"})).dim == 32


def test_ids_that_are_no_folder_beside_the_config_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for model_id in ["openai/clip-vit-base-patch32", WORLD_ALIAS, "./only-in-cwd"]:
        assert load_config(write_config(tmp_path / "configs", model_id)).model.id == model_id
    # a command-line override is typed in the shell: it stays relative to the working directory
    (tmp_path / "configs" / "beside").mkdir()
    config = load_config(write_config(tmp_path / "configs", "openai/clip-vit-base-patch32"), ["model.id=beside"])
    assert config.model.id == "beside"
    assert os.path.isabs(load_config(write_config(tmp_path / "configs", "beside")).model.id)
