"""A head is one file: ``@register_head`` above its class registers it and holds it to the contract, and
``HeadBase`` gives every capability flag its default, so the head declares only what it turns on."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fewclip.heads.registry
from fewclip.runner.config import build_config_class
from fewclip.configbase import ConfigBlock
from fewclip.heads import HEADS, FeatureSet, Task, list_heads, load_head, save_head
from fewclip.heads.base import HeadBase
from fewclip.heads.contract import CAPABILITIES, contract_problems
from fewclip.heads.registry import HeadContractError, register_head

# the order the report and the CLI list the heads in: the package's __init__ imports the head modules in it
BUILTIN_ORDER = [
    "zero_shot",
    "linear_probe",
    "coop",
    "cocoop",
    "tip_adapter",
    "tip_adapter_f",
    "clip_adapter",
    "zs_lp",
    "clap",
    "gda",
    "taskres",
    "lp_pp",
    "proker",
    "kgcoop",
    "prograd",
    "tcp",
    "clip_lora",
    "maple",
    "promptsrc",
    "clip_svd",
]

NEAREST_MEAN_MODULE = '''
"""Nearest class mean on normalised features: everything a new head needs, in one file."""

import torch

from fewclip.configbase import ConfigBlock
from fewclip.heads.base import HeadBase, normalize
from fewclip.heads.registry import register_head


class NearestMeanConfig(ConfigBlock):
    scale: float = 10.0


@register_head
class NearestMeanHead(HeadBase):
    name = "nearest_mean"
    paper = None
    official_code = None
    paper_selection = None
    config_key = "nearest_mean"
    Config = NearestMeanConfig
    uses_shots = True  # every other capability keeps HeadBase's default, False

    def __init__(self, config=None):
        self.config = config or NearestMeanConfig()

    def fit(self, task, train=None, val=None):
        features = normalize(train.features)
        self.means_ = torch.stack([features[train.labels == c].mean(0) for c in range(len(task.class_names))])
        self.history_ = []
        return self

    def logits(self, features):
        return self.config.scale * normalize(features) @ normalize(self.means_).T

    def predict(self, features):
        return self.logits(features).argmax(dim=-1)

    def state_dict(self):
        return {"means": self.means_}

    def load_state(self, tensors, meta):
        self.means_ = tensors["means"]

    def trainable_parameters(self):
        return 0
'''


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads registered during the test leave the registry when it ends (the built-in ones stay, in order)."""
    monkeypatch.setattr(HEADS, "_items", dict(HEADS._items))


def import_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the module at ``path`` as a user's own file would be imported (gone from sys.modules afterwards)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    return module


def test_the_builtin_heads_register_themselves_in_their_order() -> None:
    assert list_heads() == BUILTIN_ORDER
    assert list_heads is fewclip.heads.registry.list_heads and HEADS is fewclip.heads.registry.HEADS
    assert all(issubclass(HEADS.get(name), HeadBase) for name in list_heads())


def test_head_base_defaults_every_capability_to_false_and_nothing_else() -> None:
    assert {name: value for name, value in vars(HeadBase).items() if isinstance(value, bool)} == {
        cap.flag: False for cap in CAPABILITIES
    }
    # name, paper, official_code, paper_selection, config_key and Config are only typed here: every head says them
    assert not {"name", "paper", "official_code", "paper_selection", "config_key", "Config"} & set(vars(HeadBase))


def test_a_head_in_one_new_file_is_registered_checked_configured_and_loadable(tmp_path: Path) -> None:
    (tmp_path / "nearest_mean_head.py").write_text(textwrap.dedent(NEAREST_MEAN_MODULE))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HEADS, "_items", dict(HEADS._items))  # the new head leaves the registry with the context
        module = import_file(tmp_path / "nearest_mean_head.py", patch)

        head_cls = module.NearestMeanHead
        assert list_heads() == BUILTIN_ORDER + ["nearest_mean"]
        assert HEADS.get("nearest_mean") is head_cls
        assert contract_problems(head_cls) == []
        assert not head_cls.uses_text and not head_cls.transfers and not head_cls.selects_epoch  # HeadBase's
        # the config takes its block, as for a built-in head
        config = build_config_class().model_validate(
            {
                "dataset": {"source": "folder", "path": str(tmp_path)},
                "methods": ["nearest_mean"],
                "nearest_mean": {"scale": 5.0},
            }
        )
        assert config.nearest_mean == module.NearestMeanConfig(scale=5.0)

        features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
        train = FeatureSet(features, torch.tensor([0, 0, 1, 1]))
        head = head_cls(config.nearest_mean).fit(Task(["a", "b"]), train)
        assert head.predict(features).tolist() == [0, 0, 1, 1]
        save_head(head, tmp_path / "heads" / "nearest_mean", ["a", "b"])
        loaded, meta = load_head(tmp_path / "heads" / "nearest_mean")  # found through the registry, by its name
        assert type(loaded) is head_cls and meta["head"] == "nearest_mean"
        assert torch.equal(loaded.logits(features), head.logits(features))
    assert list_heads() == BUILTIN_ORDER and "nearest_mean_head" not in sys.modules


def test_a_head_that_breaks_the_contract_is_refused_at_registration(scratch_registry: None) -> None:
    class MisspeltConfig(ConfigBlock):
        pass

    with pytest.raises(HeadContractError) as refused:

        @register_head
        class MisspeltHead(HeadBase):
            name = "misspelt"
            paper = None
            official_code = None
            paper_selection = None
            config_key = None
            Config = MisspeltConfig
            transfers = True

            def tranfer(self, backbone: object, class_names: list[str]) -> "MisspeltHead":  # misspelt: never called
                return self

    assert refused.value.problems == [
        "misspelt: transfers is True but the class lacks transfer() "
        f"({next(c.meaning for c in CAPABILITIES if c.flag == 'transfers')})"
    ]
    assert "MisspeltHead is not registered" in str(refused.value)
    assert "misspelt: transfers is True but the class lacks transfer()" in str(refused.value)
    assert "misspelt" not in list_heads()


def test_a_head_must_name_its_paper_and_official_code_itself(scratch_registry: None) -> None:
    """HeadBase gives no paper: a head that forgets it is refused, and one built on a head names its own."""

    class NoPaper(HeadBase):
        name = "no_paper"
        config_key = None
        Config = ConfigBlock

    with pytest.raises(HeadContractError, match="no_paper: declare paper in the class that declares its name"):
        register_head(NoPaper)

    borrowing = type("Borrowing", (HEADS.get("coop"),), {"name": "borrowing", "config_key": "borrowing"})
    with pytest.raises(HeadContractError, match="borrowing: declare official_code in the class that declares its name"):
        register_head(borrowing)
    assert list_heads() == BUILTIN_ORDER


def test_a_name_registered_twice_is_refused(scratch_registry: None) -> None:
    again = type(
        "ZeroShotAgain",
        (HEADS.get("zero_shot"),),
        {"name": "zero_shot", "paper": None, "official_code": None, "paper_selection": None},
    )
    with pytest.raises(ValueError, match="head 'zero_shot' is registered twice"):
        register_head(again)
    assert HEADS.get("zero_shot").__name__ == "ZeroShotHead"


def test_what_the_report_says_of_a_head_is_declared_on_it() -> None:
    """The papers' names, validation-free heads and validation searches: read off the heads, not listed by name."""
    from fewclip.heads.base import own_declaration
    from fewclip.heads.selection_protocol import paper_selection
    from fewclip.report.published import paper_method

    assert {n: paper_method(n) for n in list_heads() if paper_method(n)} == {
        "zero_shot": "CLIP",
        "linear_probe": "Linear probe CLIP",
        "coop": "CoOp",
        "cocoop": "CoCoOp",
        "gda": "GDA",
        "taskres": "TaskRes",
        "lp_pp": "LP++",
        "proker": "ProKeR",
        "maple": "MaPLe",
        "tcp": "TCP",
        "tip_adapter": "Tip-Adapter",
        "tip_adapter_f": "Tip-Adapter-F",
        "clip_adapter": "CLIP-Adapter",
        "zs_lp": "ZS-LP",
        "clap": "CLAP",
        "kgcoop": "KgCoOp",
        "prograd": "ProGrad",
        "clip_lora": "CLIP-LoRA",
        "promptsrc": "PromptSRC",
        "clip_svd": "CLIP-SVD",
    }
    assert own_declaration(HEADS.get("kgcoop"), "published_as") == "KgCoOp"  # its own, not CoOp's inherited
    assert paper_method("coop@n4") is None  # a variant is not the paper's method
    chosen_otherwise = {  # every other built-in head's paper is validation-free (Dassl's or its own last epoch)
        "zero_shot": "none",
        "linear_probe": "few-shot validation",
        "tip_adapter": "validation split",
        "tip_adapter_f": "test set (released code)",
        "gda": "validation split",
        "lp_pp": "few-shot validation",
        "proker": "few-shot validation",
    }
    assert {n: paper_selection(HEADS.get(n)) for n in list_heads()} == {
        n: chosen_otherwise.get(n, "validation-free") for n in BUILTIN_ORDER
    }
    # where the released code selects on ImageNet's test set (its val features are the test features)
    assert {n for n in list_heads() if paper_selection(HEADS.get(n), "ImageNet") != paper_selection(HEADS.get(n))} == {
        "tip_adapter",
        "gda",
        "proker",
    }
    assert [n for n in list_heads() if HEADS.get(n).validation_search] == [
        "tip_adapter",
        "tip_adapter_f",
        "gda",
        "lp_pp",
        "proker",
    ]
