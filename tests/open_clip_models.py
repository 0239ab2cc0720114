"""OpenCLIP models for tests, built without downloads (``pretrained=None``) and saved as local checkpoints.

Two tiny architectures (a ResNet and a ViT) are registered through OpenCLIP's own model-config
mechanism (``add_model_config`` on a JSON file, which is also what ``model.id: file.json`` does);
RN50 is built at full size for the exactness checks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_CONFIGS = {
    "fewclip-tiny-rn": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16, "patch_size": None},
        "text_cfg": TINY_TEXT,
    },
    "fewclip-tiny-vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": TINY_TEXT,
    },
}


def require_open_clip():
    """The open_clip module; skipped where it is not installed, unless FEWCLIP_REQUIRE_OPEN_CLIP=1 (CI's
    OpenCLIP environment), where its absence fails the test instead of hiding it."""
    if os.environ.get("FEWCLIP_REQUIRE_OPEN_CLIP") == "1":
        import open_clip

        return open_clip
    return pytest.importorskip("open_clip", reason="OpenCLIP not installed here (bash setup.sh --open-clip)")


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """A state dict as safetensors, the way a user would keep weights (OpenCLIP loads it by suffix)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def build_open_clip(folder: Path, name: str, seed: int = 0) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a seeded random model: a tiny registered one, or a built-in like RN50."""
    open_clip = require_open_clip()
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / f"{name}.json"
    if name in TINY_CONFIGS:
        config_file.write_text(json.dumps(TINY_CONFIGS[name], indent=2))
        open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    if name in TINY_CONFIGS:  # random init leaves the tiny tower near-constant; spread its features out
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.add_(torch.randn_like(param) * 0.05)
    return config_file, save_checkpoint(model, folder / f"{name}.safetensors")
