"""configs/coop_suite/: one config per CoOp dataset in the papers' few-shot protocol (ImageNet's evaluated on its 4
variants too), and the cross-dataset example."""

from __future__ import annotations

from pathlib import Path

from fewclip.runner.config import load_config
from fewclip.data.sources.dassl_layouts import COOP_DATASETS

SUITE = Path(__file__).resolve().parents[1] / "configs" / "coop_suite"

# CoOp's trainers/zsclip.py CUSTOM_TEMPLATES, written out here (keys are fewclip's dataset names)
COOP_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "Flowers102": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DTD": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
}
VARIANTS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
CROSS_DATASET = "imagenet_xd"  # trains ImageNet like imagenet.yaml, for the cross-dataset protocol


def suite_configs() -> dict[str, object]:
    return {path.stem: load_config(path) for path in sorted(SUITE.glob("*.yaml"))}


def test_every_coop_dataset_has_one_config_in_the_papers_protocol() -> None:
    configs = [c for stem, c in suite_configs().items() if stem != CROSS_DATASET]
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
            4,
            "a photo of a",
            10,
            1,
        ), name
        assert config.output.dir.startswith("runs/coop_suite/"), name


def test_coop_epochs_follow_coop_per_budget_and_imagenet() -> None:
    configs = {c.dataset.name: c for stem, c in suite_configs().items() if stem != CROSS_DATASET}
    assert configs["ImageNet"].coop.epochs == 50
    assert configs["DTD"].coop.epochs == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


def test_imagenet_is_evaluated_on_its_4_variants_in_coops_layout() -> None:
    imagenet = suite_configs()["imagenet"].dataset
    assert [(t.source, t.name, t.path) for t in imagenet.eval_on] == [("coop", v, "data") for v in VARIANTS]
    for config in suite_configs().values():  # the variants are targets, never trained on
        assert config.dataset.name not in VARIANTS


def test_cross_dataset_config_trains_imagenet_and_evaluates_the_other_10() -> None:
    config = suite_configs()[CROSS_DATASET]
    assert (config.dataset.source, config.dataset.name, config.dataset.path) == ("coop", "ImageNet", "data")
    assert [t.name for t in config.dataset.eval_on] == [n for n in COOP_DATASETS if n != "ImageNet"]
    assert config.few_shot.shots == [16] and config.splits.sampler == "coop"
    assert "linear_probe" in config.methods  # shown as "cannot transfer"
    assert not config.output.dir.startswith("runs/coop_suite/")  # not among the 11 few-shot runs compare averages
