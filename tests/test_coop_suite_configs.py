"""configs/coop_suite/: one config per CoOp dataset in the papers' few-shot protocol (ImageNet's evaluated on its 4
variants too), and the cross-dataset example; every registered head in each, with its paper's per-dataset recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fewclip.runner.config import load_config
from fewclip.data.sources.dassl_layouts import COOP_DATASETS
from fewclip.heads import list_heads

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


def suite_configs() -> dict[str, Any]:
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


# --- each head's per-dataset recipe -------------------------------------------------------------------------------
# config stem -> head block -> key -> value: the official code's per-dataset (or per-budget) settings the suite sets,
# each with the file it comes from. Every other key of every head block must be the block's default.
TIP = "gaopengcuhk/Tip-Adapter configs/{}.yaml (search_scale [beta, alpha], init_alpha; train_epoch: Tip-Adapter-F)"
PROKER = "ybendou ProKeR code (omarnust/BReg-Adapter@f2ecb3d) configs/RN50/configs_proker/{}.yaml (beta, lmbda)"
PROGRAD_LAMBDA = (
    "BeierZhu/Prompt-align ProGrad.public/README.md: LAMBDA 0.8 at 8 and 16 shots on Flowers102, DTD, EuroSAT"
)
PROGRAD_WORDS = "BeierZhu/Prompt-align ProGrad.public/trainers/prograd.py CUSTOM_TEMPLATES, the template without ' {}.'"
PROMPTSRC_FS = "muzairkhattak/PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml"
PROMPTSRC_XD = "muzairkhattak/PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"
MAPLE_XD = (
    "muzairkhattak/multimodal-prompt-learning configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"
)
TASKRES = "geekyutao/TaskRes train_regular.sh (ImageNet: adam_lr2e-4_B256_ep100/ep200.yaml; oxford_flowers: scale 1.0)"
COOP = "KaiyangZhou/CoOp COOP.md (ep50 / ep100 / 200 per budget; ImageNet ep50)"
COCOOP = "KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"

SOURCES = {  # head -> the official file(s) its per-dataset values come from
    "coop": COOP,
    "cocoop": COCOOP,
    "tip_adapter": TIP,
    "tip_adapter_f": TIP,
    "taskres": TASKRES,
    "proker": PROKER,
    "prograd": f"{PROGRAD_LAMBDA}; ctx_init: {PROGRAD_WORDS}",
    "maple": MAPLE_XD,
    "promptsrc": f"{PROMPTSRC_FS}; imagenet_xd: {PROMPTSRC_XD}",
}

COOP_FEW_SHOT = {"n_ctx": 16, "class_token_position": "end", "epochs": {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}}
COCOOP_BLOCK = {"n_ctx": 4, "ctx_init": "a photo of a", "epochs": 10, "batch_size": 1}
GPA_30 = {"epochs": 50, "gpa_mean": 30.0, "gpa_std": 30.0}  # ImageNet, Caltech101, OxfordPets, Food101, UCF101, SUN397
GPA_45 = {"epochs": 50, "gpa_mean": 45.0, "gpa_std": 5.0}  # StanfordCars, Flowers102, FGVCAircraft, DTD, EuroSAT
LAMBDA = {1: 1.0, 8: 0.8}


def tips(beta_scale: float, alpha_scale: float, alpha: float, epochs: int = 20) -> dict[str, dict[str, float]]:
    """Tip-Adapter's and Tip-Adapter-F's blocks from one Tip-Adapter config (train_epoch: Tip-Adapter-F only)."""
    keys = {"search_scale_beta": beta_scale, "search_scale_alpha": alpha_scale, "alpha": alpha}
    return {"tip_adapter": keys, "tip_adapter_f": keys | ({"epochs": epochs} if epochs != 20 else {})}


def grids(beta: tuple[float, float, int], lmbda: tuple[float, float, int]) -> dict[str, tuple[float, float, int]]:
    return {"beta_grid": beta, "lmbda_grid": lmbda}


IMAGENET = {
    "coop": {"n_ctx": 16, "class_token_position": "end", "epochs": 50},  # COOP
    "cocoop": COCOOP_BLOCK,  # COCOOP
    "taskres": {"lr": 2e-4},  # TASKRES
    "proker": grids((1.5, 3, 10), (0.05, 0.25, 10)),  # PROKER.format("imagenet")
    "maple": {"lr": 0.0026, "epochs": 2, "depth": 3},  # MAPLE_XD: MaPLe's only all-class ImageNet recipe
}
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "caltech101": {
        **tips(12, 5, 3),  # TIP.format("caltech101")
        "promptsrc": GPA_30,  # PROMPTSRC_FS
    },
    "dtd": {
        **tips(13, 13, 2),  # TIP.format("dtd")
        "proker": grids((0.1, 10, 20), (0.001, 10, 100)),  # PROKER.format("dtd")
        "prograd": {"projection": LAMBDA, "ctx_init": "a texture of"},  # PROGRAD_LAMBDA, PROGRAD_WORDS
        "promptsrc": GPA_45,  # PROMPTSRC_FS
    },
    "eurosat": {
        **tips(12, 10, 2, epochs=100),  # TIP.format("eurosat")
        "proker": grids((0.5, 3, 20), (0.001, 1, 100)),  # PROKER.format("eurosat")
        "prograd": {"projection": LAMBDA, "ctx_init": "a centered satellite photo of"},  # PROGRAD_*
        "promptsrc": GPA_45,  # PROMPTSRC_FS
    },
    "fgvc_aircraft": {
        **tips(30, 30, 5),  # TIP.format("fgvc")
        "promptsrc": GPA_45,  # PROMPTSRC_FS
    },
    "flowers102": {
        **tips(50, 50, 10),  # TIP.format("oxford_flowers")
        "taskres": {"residual_scale": 1.0},  # TASKRES
        "proker": grids((0.1, 10, 20), (0.001, 10, 100)),  # PROKER.format("oxford_flowers")
        "prograd": {"projection": LAMBDA},  # PROGRAD_LAMBDA
        "promptsrc": GPA_45,  # PROMPTSRC_FS
    },
    "food101": {
        **tips(10, 10, 1.17),  # TIP.format("food101")
        "promptsrc": GPA_30,  # PROMPTSRC_FS
    },
    "imagenet": {**IMAGENET, "promptsrc": GPA_30},  # PROMPTSRC_FS; tip_adapter: configs/imagenet.yaml = defaults
    "imagenet_xd": {
        **IMAGENET,
        "promptsrc": {"text_depth": 3, "vision_depth": 3, "gpa_mean": 6.0, "gpa_std": 10.0},  # PROMPTSRC_XD
    },
    "oxford_pets": {  # Tip-Adapter configs/oxford_pets.yaml = the defaults (imagenet.yaml's)
        "proker": grids((0.01, 5, 40), (0.01, 0.3, 20)),  # PROKER.format("oxford_pets")
        "promptsrc": GPA_30,  # PROMPTSRC_FS
    },
    "stanford_cars": {
        **tips(20, 10, 3),  # TIP.format("stanford_cars")
        "proker": grids((0.1, 10, 5), (0.01, 1, 5)),  # PROKER.format("stanford_cars")
        "promptsrc": GPA_45,  # PROMPTSRC_FS
    },
    "sun397": {
        **tips(12, 10, 1.17),  # TIP.format("sun397")
        "proker": grids((0.1, 10, 20), (0.01, 10, 10)),  # PROKER.format("sun397")
        "promptsrc": GPA_30,  # PROMPTSRC_FS
    },
    "ucf101": {
        **tips(7, 3, 3),  # TIP.format("ucf101")
        "prograd": {"ctx_init": "a photo of a person doing"},  # PROGRAD_WORDS
        "promptsrc": GPA_30,  # PROMPTSRC_FS
    },
}
for stem, recipe in RECIPES.items():  # CoOp's and CoCoOp's blocks are in every few-shot config
    if stem not in ("imagenet", "imagenet_xd"):
        recipe.update({"coop": COOP_FEW_SHOT, "cocoop": COCOOP_BLOCK})


def test_every_registered_head_runs_in_every_suite_config() -> None:
    for stem, config in suite_configs().items():
        assert config.methods == list_heads(), stem


@pytest.mark.parametrize("stem", sorted(RECIPES))
def test_each_head_block_is_its_papers_recipe_for_the_dataset(stem: str) -> None:
    """The recipe table's values, and every other key of every head block at the block's default."""
    config = suite_configs()[stem]
    expected = RECIPES[stem]
    for head in list_heads():
        block = getattr(config, head, None)
        if block is None:
            assert head == "zero_shot"  # the one head without a block
            continue
        set_here = expected.get(head, {})
        values = block.model_dump()
        defaults = type(block)().model_dump()
        for key, value in values.items():
            want = set_here.get(key, defaults[key])
            if isinstance(want, tuple):
                value = tuple(value)
            assert value == want, f"{stem}: {head}.{key} is {value!r}, the recipe says {want!r}"
        assert set(set_here) <= set(values), f"{stem}: {head} has no key {set(set_here) - set(values)}"


def test_recipe_table_covers_every_suite_config_and_differs_from_defaults() -> None:
    assert sorted(RECIPES) == sorted(suite_configs())
    assert {head for recipe in RECIPES.values() for head in recipe} == set(SOURCES)  # each value's source named
    for stem, recipe in RECIPES.items():
        config = suite_configs()[stem]
        for head, keys in recipe.items():
            if head in ("coop", "cocoop"):  # written out in full: they state the protocol the suite runs
                continue
            block = getattr(config, head)
            defaults = type(block)()
            assert any(getattr(defaults, k) != v for k, v in keys.items()), f"{stem}: {head}'s recipe is its defaults"


def test_per_budget_settings_resolve_to_the_papers_value_at_each_budget() -> None:
    """coop's epochs, prograd's lambda and tip_adapter_f: the value a run at each budget trains with."""
    configs = suite_configs()
    dtd, imagenet = configs["dtd"], configs["imagenet"]
    assert [dtd.coop.epochs_for(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert [imagenet.coop.epochs_for(k) for k in (1, 2, 4, 8, 16)] == [50] * 5
    assert [dtd.prograd.projection_for(k) for k in (1, 2, 4, 8, 16)] == [1.0, 1.0, 1.0, 0.8, 0.8]
    assert [configs["caltech101"].prograd.projection_for(k) for k in (1, 16)] == [1.0, 1.0]
    assert [dtd.prograd.epochs_for(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]  # the README's
    assert [imagenet.taskres.epochs_for(k) for k in (1, 4, 8, 16)] == [100, 100, 200, 200]  # lr 2e-4 at every one


def test_base_to_new_overrides_in_the_headers_load_and_give_the_b2n_recipes() -> None:
    """Each few-shot config's header runs CoCoOp's base-to-new protocol with overrides: they load, and give
    PromptSRC's vit_b16_c2_ep20_batch4_4+4ctx, GDA's pooled estimator (main_base2new.py) and, on ImageNet, MaPLe's
    vit_b16_c2_ep5_batch4_2ctx."""
    for path in sorted(SUITE.glob("*.yaml")):
        if path.stem == CROSS_DATASET:
            continue
        command = header_command(path.read_text(), "splits.subsample=base2new")
        config = load_config(path, command)
        assert config.splits.subsample == "base2new" and config.few_shot.shots == [16], path.name
        assert (config.promptsrc.epochs, config.promptsrc.gpa_mean, config.promptsrc.gpa_std) == (20, 15, 1)
        assert config.gda.estimator == "pooled"
        assert (config.maple.lr, config.maple.epochs, config.maple.depth) == (0.0035, 5, 9), path.name
        assert config.output.dir == f"runs/coop_suite_b2n/{path.stem}"


def header_command(text: str, marker: str) -> list[str]:
    """The overrides of the header's `fewclip run` command that holds ``marker`` (its continued lines joined)."""
    lines = [line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("fewclip run") and marker in line)
    words: list[str] = []
    for line in lines[start:]:
        words += line.removesuffix("\\").split()
        if not line.endswith("\\"):
            break
    return words[3:]  # after `fewclip run CONFIG`
