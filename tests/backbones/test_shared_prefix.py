"""encode_shared_prefix (prefix once per group, last layer on the EOT token only) equals the full tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from fewclip.backbones.prompt_tower import PromptTextTower, encode_shared_prefix


@pytest.fixture(scope="module")
def tower(tiny_clip: Path) -> PromptTextTower:
    return PromptTextTower(CLIPModel.from_pretrained(str(tiny_clip)).eval().requires_grad_(False))


def test_shared_prefix_equals_every_full_prompt_with_gradients(tower: PromptTextTower) -> None:
    generator = torch.Generator().manual_seed(0)
    groups, n_prompts, n_prefix, n_suffix = 2, 3, 5, 6
    prefix = torch.randn(groups, n_prefix, tower.width, generator=generator, requires_grad=True)
    suffix = torch.randn(groups, n_prompts, n_suffix, tower.width, generator=generator)
    eot = torch.tensor([5, 2, 0])  # EOT in the suffix: last, middle, first row
    ours = encode_shared_prefix(tower, prefix, suffix, eot)  # (G, C, d)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), prefix)

    full = torch.cat([prefix[:, None].expand(-1, n_prompts, -1, -1), suffix], dim=2).flatten(0, 1)
    reference = tower(full, (eot + n_prefix).repeat(groups)).unflatten(0, (groups, n_prompts))
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), prefix)
    assert ours.shape == (groups, n_prompts, tower.text_projection.out_features)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_ours, grad_reference, atol=1e-5, rtol=1e-4)
    # rows after EOT never reach it: changing them changes nothing
    changed = suffix.clone()
    changed[:, 1, 3:] += 1.0
    torch.testing.assert_close(encode_shared_prefix(tower, prefix, changed, eot)[:, 1], ours[:, 1], atol=1e-6, rtol=0)
