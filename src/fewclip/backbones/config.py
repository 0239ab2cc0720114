"""The ``model`` config block, shared by every backbone library, and the registry of those libraries
(``BACKBONES``, filled by ``@register_backbone`` above each library's backbone class), which ``model.library``
names.

A backbone library is one file: its backbone class, registered with the functions that check a ``model`` block
before any run and fingerprint its weights without loading them; ``fewclip.backbones`` imports the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, TypeVar

from pydantic import Field, field_validator, model_validator

from fewclip.configbase import ConfigBlock
from fewclip.registry import Registry, unknown_name_message

Precision = Literal["fp32", "bf16", "fp16"]


class BackboneClass(Protocol):
    """A library's backbone class: what it offers is known without loading a model; calling it loads one."""

    offers: frozenset[str]  # names from protocol.CAPABILITIES

    # returns a protocol.Backbone (Any here: protocol.py imports this module)
    def __call__(self, config: ModelConfig, cache_dir: Path | None = None) -> Any: ...


@dataclass(frozen=True)
class BackboneLibrary:
    """How one library's backbones are loaded, checked and fingerprinted."""

    backbone: BackboneClass
    check: Callable[[ModelConfig], None]  # fast, before any run dir or model load: raises with what to fix
    fingerprint_from_files: Callable[[ModelConfig, Path | None], dict[str, Any] | None]  # None: load it first
    # what one model of the library offers, read from its config files without loading it; None: not known
    # before loading (then the class's ``offers``, and the loaded backbone refuses what its model cannot give)
    model_offers: Callable[[ModelConfig], frozenset[str] | None] = lambda config: None

    @property
    def offers(self) -> frozenset[str]:
        """What its backbones offer beyond features (``protocol.CAPABILITIES``), known without loading a model."""
        return self.backbone.offers


BACKBONES: Registry[BackboneLibrary] = Registry("model library")

RegisteredClass = TypeVar("RegisteredClass", bound=BackboneClass)


def register_backbone(
    library: str,
    *,
    check: Callable[[ModelConfig], None],
    fingerprint_from_files: Callable[[ModelConfig, Path | None], dict[str, Any] | None],
    model_offers: Callable[[ModelConfig], frozenset[str] | None] = lambda config: None,
) -> Callable[[RegisteredClass], RegisteredClass]:
    """Class decorator: register the backbone class of ``library`` (the ``model.library`` value that chooses it);
    ``model_offers``: what one of its models offers, where that depends on the model (``BackboneLibrary``)."""

    def register(backbone_cls: RegisteredClass) -> RegisteredClass:
        BACKBONES.register(library, BackboneLibrary(backbone_cls, check, fingerprint_from_files, model_offers))
        return backbone_cls

    return register


class ModelConfig(ConfigBlock):
    """The `model` block: which CLIP, from which library, where it runs and at what precision."""

    library: str = Field(
        "hf",
        description="hf (Hugging Face transformers CLIPModel) or open_clip (OpenCLIP: "
        "ResNet CLIPs, LAION ViTs, ConvNeXt, ...; pip install 'fewclip[open_clip]', or the "
        ".venv-open-clip environment that `bash setup.sh --open-clip` builds).",
    )
    id: str = Field(
        "openai/clip-vit-base-patch32",
        description="hf: hub id, local folder in Hugging Face format, or "
        "fewclip/world-clip (the shipped world CLIP); offline (HF_HUB_OFFLINE=1 or no network) a hub id "
        "not already cached fails at once. open_clip: an architecture name (RN50, ViT-B-32, ...), an "
        "OpenCLIP model config JSON file, or local-dir:FOLDER / hf-hub:ORG/REPO. Relative paths in a YAML "
        "are read from its folder.",
    )
    pretrained: str | None = Field(
        None,
        description="open_clip only: a pretrained tag (openai, laion2b_s34b_b79k, "
        "...) or a local checkpoint file (.pt/.bin/.safetensors). A tag trained with "
        "QuickGELU (every openai one) builds the model with QuickGELU; for a local file of "
        "such weights name the -quickgelu architecture (RN50-quickgelu).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); hf only.")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")
    precision: Precision = Field(
        "fp32", description="fp32, or bf16 / fp16 autocast for the encoders (part of the feature cache key)."
    )
    batch_size: int = Field(64, ge=1, description="Images per forward pass during feature extraction.")
    loader_threads: int = Field(2, ge=0, description="Threads that read and preprocess images ahead of the encoder.")

    @field_validator("library")
    @classmethod
    def _known_library(cls, library: str) -> str:
        if library not in BACKBONES:
            raise ValueError(unknown_name_message("model library", library, BACKBONES.names()))
        return library

    @model_validator(mode="after")
    def _pretrained_for_open_clip(self) -> "ModelConfig":
        if self.library == "hf" and self.pretrained is not None:
            raise ValueError(
                "model.pretrained is for model.library: open_clip; a Hugging Face CLIP's weights are "
                "the ones in model.id (set model.library: open_clip to load an OpenCLIP checkpoint)"
            )
        if self.library == "open_clip" and self.revision is not None:
            raise ValueError(
                "model.revision is for Hugging Face hub ids (model.library: hf); OpenCLIP weights "
                "are chosen with model.pretrained"
            )
        return self
