"""Word-by-word cross-attention maps of a generated caption, and their drawing.

For token j of a caption, the map is the decoder's cross-attention at the step that *generated* it
(query position j - 1: the input there is the previous token, BOS for the first), read at one block
(``attention_layer``), averaged over heads. The softmax runs over CLS + patches; the CLS column is
dropped and the patch weights renormalised to sum to 1, so a map says where among the patches the
decoder looked. Reading needs attention weights, which the decoder's eager attention returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fewclip.saliency import overlay


@torch.no_grad()
def cross_attention_maps(
    model: Any, encoder_tokens: torch.Tensor, token_ids: Sequence[int], layer: int | None = None
) -> np.ndarray:
    """(1, T, width) encoder tokens of one image + a caption's token ids (no BOS/EOS) ->
    (n_tokens, grid, grid) maps, each summing to 1 over the patches."""
    if not token_ids:
        return np.zeros((0, 0, 0), np.float32)
    layer = model.config.attention_layer if layer is None else layer
    ids = torch.tensor([[model.bos_id, *token_ids]], device=model.device_)
    model.eval()
    with model.autocast():
        out = model.decoder_step(ids, model.memory(encoder_tokens), output_attentions=True)
    blocks = out.cross_attentions
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(
            f"caption.model.attention_layer: {layer} is out of range for a decoder with {len(blocks)} "
            f"blocks; use 0..{len(blocks) - 1} or -1 for the last"
        )
    weights = blocks[layer][0].float().mean(0)[: len(token_ids)]  # (n_tokens, T): query j-1 generated token j
    patches = weights[:, 1:]  # drop CLS
    patches = patches / patches.sum(-1, keepdim=True)
    grid = int(round(patches.shape[1] ** 0.5))
    return patches.reshape(len(token_ids), grid, grid).cpu().numpy()


def token_words(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Each token's text, for panel titles (a BPE word piece stays a piece)."""
    return [tokenizer.decode([token]).strip() or "?" for token in token_ids]


def draw_attention_panels(
    image: Any, words: Sequence[str], maps: np.ndarray, path: Path | str, title: str | None = None, columns: int = 6
) -> Path:
    """One panel per word: the image with its map (scaled to its own peak) as a heat overlay, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = np.asarray(image.convert("RGB"))
    panels = len(words) + 1
    cols = min(columns, panels)
    rows = (panels + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.1 * rows + (0.3 if title else 0)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(pixels)
    axes[0, 0].set_title("image", fontsize=9)
    for index, (word, attention) in enumerate(zip(words, maps), start=1):
        peak = float(attention.max()) or 1.0
        ax = axes[index // cols, index % cols]
        ax.imshow(overlay(pixels, attention / peak))
        ax.set_title(word, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
