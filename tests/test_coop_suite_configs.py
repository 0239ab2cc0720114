"""configs/coop_suite/: one config per CoOp dataset in the papers' few-shot protocol, and the 4 ImageNet variants."""

from __future__ import annotations

from pathlib import Path

from fewclip.config import load_config
from fewclip.data.sources.coop import COOP_DATASETS

SUITE = Path(__file__).resolve().parents[1] / "configs" / "coop_suite"

# CoOp's trainers/zsclip.py CUSTOM_TEMPLATES, written out here (keys are fewclip's dataset names)
COOP_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.", "Flowers102": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.", "DTD": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.", "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.", "SUN397": "a photo of a {}.", "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.", "ImageNet": "a photo of a {}.",
}
VARIANT_FOLDERS = {
    "imagenetv2": "data/imagenetv2/imagenetv2-matched-frequency-format-val",
    "imagenet_sketch": "data/imagenet-sketch/images",
    "imagenet_a": "data/imagenet-adversarial/imagenet-a",
    "imagenet_r": "data/imagenet-rendition/imagenet-r",
}


def suite_configs() -> dict[str, object]:
    return {path.stem: load_config(path) for path in sorted(SUITE.glob("*.yaml"))}


def test_every_coop_dataset_has_one_config_in_the_papers_protocol() -> None:
    configs = [c for c in suite_configs().values() if c.dataset.source == "coop"]
    assert sorted(c.dataset.name for c in configs) == sorted(COOP_DATASETS)
    for config in configs:
        name = config.dataset.name
        assert config.splits.sampler == "coop" and config.splits.seeds == [1, 2, 3], name
        assert config.few_shot.shots == [1, 2, 4, 8, 16], name
        assert config.model.id == "openai/clip-vit-base-patch16", name
        assert config.dataset.path == "data", name
        assert config.prompts.templates == [COOP_TEMPLATES[name]], name
        assert config.methods == ["zero_shot", "linear_probe", "coop"], name
        assert (config.cocoop.n_ctx, config.cocoop.ctx_init, config.cocoop.epochs, config.cocoop.batch_size) == (
            4, "a photo of a", 10, 1), name
        assert config.output.dir.startswith("runs/coop_suite/"), name


def test_coop_epochs_follow_coop_per_budget_and_imagenet() -> None:
    configs = {c.dataset.name: c for c in suite_configs().values() if c.dataset.source == "coop"}
    assert configs["ImageNet"].coop.epochs == 50
    assert configs["DTD"].coop.epochs == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


def test_imagenet_variants_are_test_only_zero_shot_sets_in_coops_folders() -> None:
    configs = suite_configs()
    for stem, folder in VARIANT_FOLDERS.items():
        config = configs[stem]
        assert config.dataset.source == "folder" and config.dataset.path == folder, stem
        assert config.dataset.test_fraction == 1 and config.methods == ["zero_shot"], stem
        assert config.output.dir == f"runs/coop_suite_dg/{stem}", stem  # not among the 11 that compare averages
        assert "DATASETS.md" in (SUITE / f"{stem}.yaml").read_text(encoding="utf-8")
    assert len(configs) == len(COOP_DATASETS) + len(VARIANT_FOLDERS)
