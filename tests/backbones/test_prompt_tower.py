"""The text tower run on prompt embeddings, against transformers' own ``get_text_features`` on token ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

import fewclip.backbones.prompt_tower as prompt_tower
from fewclip.backbones.prompt_tower import PromptTextTower, causal_mask

# Prompts of different lengths; the byte-level tokenizer splits every class name into several tokens.
PROMPTS = ["a photo of a red circle.", "blue triangle.", "x", "a photo of the green square on a table."]


@pytest.fixture(scope="module")
def reference_model(tiny_clip: Path) -> CLIPModel:
    """The checkpoint loaded by transformers directly, outside fewclip."""
    return CLIPModel.from_pretrained(str(tiny_clip)).eval()


@pytest.fixture(scope="module")
def tokens(tiny_clip: Path) -> dict[str, torch.Tensor]:
    """PROMPTS padded to the model's 32 positions, with the EOT index of each from the attention mask."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_clip))
    batch = tokenizer(PROMPTS, padding="max_length", return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (len(PROMPTS), 32)
    lengths = mask.sum(dim=-1)
    assert lengths.tolist() == [16, 15, 3, 26]  # SOS + tokens + EOT; the longest leaves 6 padding positions
    return {"ids": ids, "mask": mask, "eot": lengths - 1, "longest": int(lengths.max())}


def stock_features(model: CLIPModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output


def tower_features(tower: PromptTextTower, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tower(tower.embed_tokens(ids), eot)


def test_causal_mask_is_zero_on_and_below_the_diagonal() -> None:
    mask = causal_mask(4, torch.float32, torch.device("cpu"))
    assert mask.shape == (1, 1, 4, 4)
    lowest = torch.finfo(torch.float32).min
    expected = torch.tensor([[0, lowest, lowest, lowest], [0, 0, lowest, lowest], [0, 0, 0, lowest], [0, 0, 0, 0]])
    assert torch.equal(mask[0, 0], expected)


def test_eot_is_where_the_stock_model_pools(tokens: dict, reference_model: CLIPModel) -> None:
    """The EOT index used below is the first EOT id, which is what transformers pools at."""
    eos = reference_model.config.text_config.eos_token_id
    assert torch.equal(tokens["ids"][torch.arange(len(PROMPTS)), tokens["eot"]], torch.full((len(PROMPTS),), eos))
    assert torch.equal((tokens["ids"] == eos).int().argmax(dim=-1), tokens["eot"])


def test_prompt_path_equals_get_text_features(tokens: dict, reference_model: CLIPModel) -> None:
    expected = stock_features(reference_model, tokens["ids"], tokens["mask"])
    ours = tower_features(PromptTextTower(reference_model), tokens["ids"], tokens["eot"])
    assert ours.shape == expected.shape == (len(PROMPTS), reference_model.config.projection_dim)
    assert (ours - expected).abs().max().item() <= 1e-5
    # each prompt alone, unpadded, through the stock model: the padded batch changes nothing either
    for row, prompt_ids in enumerate(tokens["ids"]):
        alone = prompt_ids[: int(tokens["eot"][row]) + 1][None]
        single = stock_features(reference_model, alone, torch.ones_like(alone))
        assert (ours[row] - single[0]).abs().max().item() <= 1e-5, PROMPTS[row]
    assert torch.cdist(expected, expected).triu(1).max().item() > 0.1  # distinct prompts: the test has teeth


def test_cut_to_longest_prompt_equals_padded_to_max_length(tokens: dict, reference_model: CLIPModel) -> None:
    tower = PromptTextTower(reference_model)
    full = tower_features(tower, tokens["ids"], tokens["eot"])  # (n, 32) ids
    cut = tower_features(tower, tokens["ids"][:, : tokens["longest"]], tokens["eot"])
    # different sequence lengths change matmul blocking, so float rounding may differ in the last bit
    assert (cut - full).abs().max().item() <= 1e-6
    assert full.abs().mean().item() > 0.1


def test_tokens_after_eot_never_reach_it(tokens: dict, reference_model: CLIPModel) -> None:
    """Same shapes, random garbage after every EOT: bit-identical features (what makes cutting exact)."""
    tower = PromptTextTower(reference_model)
    embeds = tower.embed_tokens(tokens["ids"]).detach()
    garbage = embeds.clone()
    generator = torch.Generator().manual_seed(0)
    for row, eot in enumerate(tokens["eot"].tolist()):
        garbage[row, eot + 1 :] = torch.randn(garbage[row, eot + 1 :].shape, generator=generator)
    assert not torch.equal(garbage, embeds)
    with torch.no_grad():
        assert torch.equal(tower(garbage, tokens["eot"]), tower(embeds, tokens["eot"]))


def test_without_the_causal_mask_both_claims_would_fail(
    tokens: dict, reference_model: CLIPModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two tests above can fail: with an all-zero mask the tower attends to padding after EOT."""
    tower = PromptTextTower(reference_model)
    expected = stock_features(reference_model, tokens["ids"], tokens["mask"])
    monkeypatch.setattr(
        prompt_tower,
        "causal_mask",
        lambda length, dtype, device: torch.zeros(1, 1, length, length, dtype=dtype, device=device),
    )
    full = tower_features(tower, tokens["ids"], tokens["eot"])
    cut = tower_features(tower, tokens["ids"][:, : tokens["longest"]], tokens["eot"])
    assert (full - expected).abs().max().item() > 1e-2
    assert (cut - full).abs().max().item() > 1e-2


def test_encoder_without_mask_and_not_causal_differs(tokens: dict, reference_model: CLIPModel) -> None:
    """Guard the guard: the stock encoder called bidirectionally really gives other features."""
    tower = PromptTextTower(reference_model)
    text = tower.text_model
    with torch.no_grad():
        hidden = text.embeddings(inputs_embeds=tower.embed_tokens(tokens["ids"]))
        hidden = text.encoder(inputs_embeds=hidden, attention_mask=None, is_causal=False).last_hidden_state
        pooled = text.final_layer_norm(hidden)[torch.arange(len(PROMPTS)), tokens["eot"]]
        bidirectional = tower.text_projection(pooled)
    expected = stock_features(reference_model, tokens["ids"], tokens["mask"])
    assert (bidirectional - expected).abs().max().item() > 1e-2


def test_gradients_reach_the_prompt_embeddings_only(tokens: dict, tiny_clip: Path) -> None:
    model = CLIPModel.from_pretrained(str(tiny_clip)).eval().requires_grad_(False)
    tower = PromptTextTower(model)
    embeds = tower.embed_tokens(tokens["ids"]).detach().requires_grad_(True)
    tower(embeds, tokens["eot"]).square().sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum().item() > 0
    # causal: nothing after a prompt's EOT gets any gradient
    for row, eot in enumerate(tokens["eot"].tolist()):
        assert embeds.grad[row, : eot + 1].abs().sum().item() > 0
        assert torch.equal(embeds.grad[row, eot + 1 :], torch.zeros_like(embeds.grad[row, eot + 1 :]))
    assert all(p.grad is None for p in model.parameters())
