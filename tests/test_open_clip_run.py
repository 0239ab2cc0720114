"""`fewclip run` end to end on OpenCLIP models (a tiny ResNet and a tiny ViT, config JSON + local checkpoint),
every head and saliency (MaPLe on the ViT), and `predict` on the result. Runs where open_clip is installed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from fewclip.runner.cli import main
from fewclip.runner.layout import RunLayout
from fewclip.runner.predict import load_classifier
from tests.open_clip_models import build_open_clip, require_open_clip

pytestmark = [pytest.mark.open_clip, pytest.mark.slow]
METHODS = ["zero_shot", "linear_probe", "coop", "coop@n4_csc", "cocoop"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_config(folder: Path, name: str, shapes_dir: Path, cache: Path) -> Path:
    config_json, weights = build_open_clip(folder / "model", name)
    config = {
        "model": {
            "library": "open_clip",
            "id": f"model/{config_json.name}",
            "pretrained": f"model/{weights.name}",
            "batch_size": 16,
        },
        "dataset": {"source": "folder", "path": str(shapes_dir)},
        "methods": METHODS,
        "variants": {"coop@n4_csc": {"n_ctx": 4, "class_specific_context": True, "class_token_position": "middle"}},
        "few_shot": {"shots": [2]},
        "splits": {"seeds": [1], "val_per_class": 2},
        "linear_probe": {"epochs": 3},
        "coop": {"epochs": 2, "n_ctx": 8},
        "cocoop": {"epochs": 1},
        "output": {"dir": str(folder / "run"), "progress": False, "saliency_images": 2},
        "cache": {"dir": str(cache)},
    }
    path = folder / "config.yaml"  # model.id / model.pretrained relative to this file
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", ["fewclip-tiny-rn", "fewclip-tiny-vit"])
def test_run_every_head_on_open_clip(tmp_path: Path, shapes_dir: Path, name: str) -> None:
    require_open_clip()
    cache = tmp_path / "cache"
    config = write_config(tmp_path, name, shapes_dir, cache)
    assert main(["-q", "run", str(config)]) == 0
    layout = RunLayout(tmp_path / "run")
    rows = read_rows(layout.summary)
    assert sorted({r["method"] for r in rows}) == sorted(METHODS)
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    fingerprints = [json.loads(p.read_text()) for p in cache.rglob("fingerprint.json")]
    assert {f["model"] for f in fingerprints} == {name} and {f["library"] for f in fingerprints} == {"open_clip"}
    saliency = sorted(p.name for p in layout.root.rglob("*saliency*.png"))
    assert saliency, "no saliency figures were drawn"
    classifier = load_classifier(layout.root, method="coop@n4_csc")
    image = next(shapes_dir.rglob("*.png"))
    assert len(classifier.predict([image])) == 1


def test_maple_runs_on_an_open_clip_vit_then_predicts(tmp_path: Path, shapes_dir: Path) -> None:
    """MaPLe's deep prompts in OpenCLIP's blocks through the run: trained, evaluated, saliency drawn, predicted."""
    require_open_clip()
    config = write_config(tmp_path, "fewclip-tiny-vit", shapes_dir, tmp_path / "cache")
    overrides = ["methods=[zero_shot,maple]", "maple.depth=2", "maple.epochs=2", "maple.batch_size=4"]
    assert main(["-q", "run", str(config), *overrides]) == 0
    layout = RunLayout(tmp_path / "run")
    rows = [r for r in read_rows(layout.summary) if r["method"] == "maple"]
    assert rows and all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert (layout.saliency("maple", 2, 1) / "saliency.png").is_file()
    classifier = load_classifier(layout.root, method="maple")
    assert len(classifier.predict([next(shapes_dir.rglob("*.png"))])) == 1


def test_open_clip_and_hf_features_never_share_a_cache_entry(tmp_path: Path, shapes_dir: Path, tiny_clip: Path) -> None:
    require_open_clip()
    cache = tmp_path / "cache"
    rn_config = write_config(tmp_path / "rn", "fewclip-tiny-rn", shapes_dir, cache)
    vit_config = write_config(tmp_path / "vit", "fewclip-tiny-vit", shapes_dir, cache)
    for config in (rn_config, vit_config):
        assert main(["-q", "run", str(config), "methods=[linear_probe]"]) == 0
    assert (
        main(
            [
                "-q",
                "run",
                str(vit_config),
                "methods=[linear_probe]",
                "model.library=hf",
                f"model.id={tiny_clip}",
                "model.pretrained=null",
                f"output.dir={tmp_path / 'hf-run'}",
            ]
        )
        == 0
    )
    keys = {p.parent.name: json.loads(p.read_text()) for p in cache.rglob("fingerprint.json")}
    assert len(keys) == 3, keys  # three models, three cache entries


def test_imagenette_rn50_config_runs_as_written_on_local_weights_and_images(tmp_path: Path, shapes_dir: Path) -> None:
    """configs/imagenette_rn50.yaml unchanged but for what needs the internet (RN50 weights -> a local RN50
    file of random weights; ImageNette -> the test shapes) and its length (epochs, shots)."""
    require_open_clip()
    from fewclip.backbones import check_backbone
    from fewclip.runner.config import load_config

    shipped = Path(__file__).resolve().parents[1] / "configs" / "imagenette_rn50.yaml"
    check_backbone(load_config(shipped).model)  # RN50 + the openai tag are known to OpenCLIP, offline
    _, weights = build_open_clip(tmp_path / "rn50", "RN50")
    data = yaml.safe_load(shipped.read_text())
    data["dataset"] = {"source": "folder", "path": str(shapes_dir)}  # ImageNette's folder layout -> the shapes'
    config = tmp_path / "imagenette_rn50.yaml"
    config.write_text(yaml.safe_dump(data))
    overrides = [
        f"model.pretrained={weights}",
        "few_shot.shots=[1]",
        "coop.epochs=1",
        f"output.dir={tmp_path / 'run'}",
        f"cache.dir={tmp_path / 'c'}",
        "output.saliency_images=1",
        "output.progress=false",
    ]
    assert main(["-q", "run", str(config), *overrides]) == 0
    rows = read_rows(RunLayout(tmp_path / "run").summary)
    assert sorted({r["method"] for r in rows}) == ["coop", "coop@csc", "coop@ctx4", "zero_shot"]
