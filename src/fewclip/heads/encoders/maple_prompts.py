"""MaPLe's learned tensors: the context, the deep text prompts and the coupling that makes the vision prompts.

The prompt ``[SOS] [ctx]*n_ctx [rest of ctx_init] [name tokens] [.] [EOT]`` carries ``ctx`` at positions
1..n_ctx (as the reference, github.com/muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``
``MultiModalPromptLearner``, builds it). Coupling: the vision prompts are functions of the text prompts,
``proj(ctx)`` at layer 0 and ``deep_proj[i](deep_text[i])`` before layer i + 1, each a Linear(text width ->
vision width). Only these tensors train; with ``coupling`` off there are no vision prompts at all (text-only
deep prompting) and the image tower is the frozen one, exactly. How the prompts enter the towers is the
backbone's (``Backbone.deep_prompt_towers``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fewclip.heads.encoders.deep_prompts import DeepPrompts


class MaplePrompts(DeepPrompts):
    """The learned tensors: ``ctx`` (n_ctx, text width), ``deep_text`` (depth - 1 of (n_ctx, text width)),
    and with coupling ``proj`` and ``deep_proj`` (depth - 1 Linears, text width -> vision width)."""

    def __init__(self, ctx: torch.Tensor, depth: int, coupling: bool, vision_width: int) -> None:
        super().__init__()
        n_ctx, width = ctx.shape
        self.ctx = nn.Parameter(ctx.clone())
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, width) * 0.02) for _ in range(depth - 1)])
        self.coupling = coupling
        if coupling:
            self.proj = nn.Linear(width, vision_width)
            one = nn.Linear(width, vision_width)  # the reference clones one layer: every deep projection starts alike
            self.deep_proj = nn.ModuleList([copy.deepcopy(one) for _ in range(depth - 1)])

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[0])

    def vision(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(shallow (n_ctx, vision width) or None, deep vision prompts, one per layer 1..depth-1)."""
        if not self.coupling:
            return None, []
        return self.proj(self.ctx), [layer(prompt) for layer, prompt in zip(self.deep_proj, self.deep_text)]
