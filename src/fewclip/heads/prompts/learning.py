"""What the prompt learners share: prompt layouts and context initialisation (their loop: ``fewclip.training.features_loop``).

A prompt for class c is ``[SOS] [ctx]*n [name tokens] [.] [EOT]`` (``end``), ``[SOS] [ctx]*n/2 [name]
[ctx]*n/2 [.] [EOT]`` (``middle``) or ``[SOS] [name] [ctx]*n [.] [EOT]`` (``front``); the context
vectors are scattered into the token embeddings at ``ctx_positions`` so one code path serves all three.

As the reference CoOp code (``prompt_prefix + " " + name + "."`` tokenised whole), the name and its period
are tokenised together: BPE keeps a name's trailing punctuation in one piece with the period ("cat!." ->
"cat", "!."), so tokenising them apart would make a "a photo of a" context differ from zero-shot's
"a photo of a cat!." prompt. ``middle`` and ``front`` put the context after the name's own token count,
as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from fewclip.backbones.protocol import Backbone, PromptTower, TextTokens
from fewclip.heads.base import FeatureSet, Task, task_backbone
from fewclip.heads.prompts.config import CtxInitMode, PromptLearningConfig
from fewclip.heads.prompts.lengths import text_positions

Position = Literal["end", "middle", "front"]


@dataclass
class PromptLayout:
    token_ids: torch.Tensor  # (C, L) ids; context slots hold the SOS id as a placeholder
    ctx_positions: torch.Tensor  # (C, n_ctx) where each class's context vectors go
    eot_positions: torch.Tensor  # (C,)

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[1])

    @property
    def shared_prefix(self) -> int:
        """Leading positions identical in every class prompt when the context is shared: computed once.

        ``end``: SOS + all context; ``middle``: SOS + the first half; ``front``: SOS (+ any common name
        tokens). Capped so every prompt keeps its EOT in its own part.
        """
        same = (self.token_ids == self.token_ids[:1]).all(dim=0)
        ctx_same = torch.zeros_like(same)
        if self.ctx_positions.numel():
            for column in range(self.ctx_positions.shape[1]):
                if (self.ctx_positions[:, column] == self.ctx_positions[0, column]).all():
                    ctx_same[self.ctx_positions[0, column]] = True
        is_ctx = torch.zeros(self.token_ids.shape, dtype=torch.bool)
        is_ctx.scatter_(1, self.ctx_positions, True)
        # a position is shared if its token is the same everywhere and, where it holds context, it holds
        # the same context slot everywhere
        shared = same & (~is_ctx.any(dim=0) | ctx_same)
        length = int(shared.int().cumprod(0).sum())
        return min(length, int(self.eot_positions.min()))


def context_init_ids(tokens: TextTokens, words: str) -> list[int]:
    """Token ids of ``ctx_init`` words ("a photo of a" -> 4 ids); their count becomes n_ctx."""
    ids = tokens.word_ids(words.replace("_", " ").strip())
    if not ids:
        raise ValueError(f"ctx_init {words!r} has no tokens")
    return ids


def name_and_period_ids(tokens: TextTokens, name: str) -> tuple[list[int], list[int]]:
    """Ids of ``name + "."`` tokenised together, split after the name's own token count (as the reference
    CoOp splits them for ``middle`` and ``front``): (the name's part, the period's part)."""
    ids = tokens.word_ids(name + ".")
    count = len(tokens.word_ids(name))
    return ids[:count], ids[count:]


def build_layout(
    tokens: TextTokens,
    class_names: Sequence[str],
    n_ctx: int,
    position: Position,
    max_positions: int,
    key: str = "coop",
    n_ctx_key: str | None = None,
) -> PromptLayout:
    """Token layout of every class prompt, cut to the longest real prompt (exact under the causal mask).

    A prompt longer than ``max_positions`` is an error; ``n_ctx_key`` names the config key that set the
    context length (``coop.n_ctx``, or ``coop.ctx_init`` whose words give it).
    """
    sos, eot = tokens.sos_id, tokens.eot_id
    rows, ctx_rows, eots = [], [], []
    for name in class_names:
        name_ids, period = name_and_period_ids(tokens, name)
        if position == "end":
            parts = [[sos], None, name_ids + period]
        elif position == "front":
            parts = [[sos], name_ids, None, period]
        else:
            parts = [[sos], None, name_ids, None, period]
        ids: list[int] = []
        ctx_pos: list[int] = []
        halves = [n_ctx // 2, n_ctx - n_ctx // 2] if position == "middle" else [n_ctx]
        for part in parts:
            if part is None:
                count = halves.pop(0)
                ctx_pos += range(len(ids), len(ids) + count)
                ids += [sos] * count
            else:
                ids += part
        ids += [eot]
        if len(ids) > max_positions:
            raise ValueError(
                prompt_overflow_message(
                    key, n_ctx_key or f"{key}.n_ctx", name, n_ctx, len(ids) - n_ctx, len(ids) - n_ctx - 3, max_positions
                )
            )  # SOS, '.', EOT
        rows.append(ids)
        ctx_rows.append(ctx_pos)
        eots.append(len(ids) - 1)
    length = max(len(r) for r in rows)
    token_ids = torch.tensor([r + [eot] * (length - len(r)) for r in rows], dtype=torch.long)
    return PromptLayout(token_ids, torch.tensor(ctx_rows, dtype=torch.long), torch.tensor(eots, dtype=torch.long))


def prompt_overflow_message(
    key: str, n_ctx_key: str, name: str, n_ctx: int, without_context: int, name_tokens: int, limit: int
) -> str:
    """What to change when a class prompt does not fit: the name alone, or the context on top of it."""
    if without_context > limit:  # no context length can help: only the name can change
        return (
            f"{key}: the prompt for class {name!r} needs {without_context} tokens before any context "
            f"({name_tokens} for the name + SOS, '.', EOT) but the model has {limit} text positions; "
            f"shorten the class name (dataset.rename)"
        )
    fix = (
        f"lower {n_ctx_key} to at most {limit - without_context}"
        if n_ctx_key.endswith("n_ctx")
        else f"use fewer words in {n_ctx_key} (at most {limit - without_context} tokens)"
    )
    return (
        f"{key}: the prompt for class {name!r} needs {n_ctx + without_context} tokens ({n_ctx} context + "
        f"{name_tokens} for the name + SOS, '.', EOT) but the model has {limit} text positions; "
        f"{fix}, or shorten the class name (dataset.rename)"
    )


def check_prompts_fit(task: Task, config: PromptLearningConfig, position: Position, key: str) -> None:
    """Fail before any training if ctx_init's words are not one token each for this tokenizer, or a class prompt
    (the config's ``n_ctx`` context + name + SOS, '.', EOT) exceeds the positions."""
    backbone = task_backbone(task, key)
    tokens, ctx_init = backbone.tokens, config.ctx_init
    if ctx_init:  # the config counted ctx_init's words (n_ctx, or what n_ctx must hold): each must be one token
        ids = context_init_ids(tokens, ctx_init)
        words = config.context_words
        if len(ids) != words:
            raise ValueError(
                f"{key}.ctx_init {ctx_init!r}: its {words} word(s) are {len(ids)} tokens for this model's tokenizer, "
                f"and the context takes one vector per word; use words the tokenizer keeps whole, or set "
                f"{key}.ctx_init: null and {key}.n_ctx to the context length"
            )
    n_ctx_key = f"{key}.ctx_init" if ctx_init and config.init_mode == "words" else f"{key}.n_ctx"  # sets the length
    build_layout(tokens, task.class_names, config.n_ctx, position, text_positions(backbone), key, n_ctx_key)


def checked_fit_inputs(head: Any, task: Task, train: FeatureSet | None) -> tuple[Backbone, FeatureSet]:
    """A prompt learner's backbone and training features, once the checks that fail before any work have passed: the
    text tower is there, there are training features, ``head.check`` (every prompt fits)."""
    backbone = task_backbone(task, head.name)
    if train is None or len(train) == 0:
        raise ValueError(f"{head.name} needs training features")
    head.check(task)
    return backbone, train


def starting_context(head: Any, backbone: Backbone, task: Task, class_specific: bool = False) -> torch.Tensor:
    """A prompt learner's context before training (after ``checked_fit_inputs``): the config's ``n_ctx`` vectors
    (``init_context``), random ones drawn from a generator seeded with the task's seed."""
    cfg = head.config
    return init_context(
        backbone.prompt_tower(),
        backbone.tokens,
        cfg.n_ctx,
        cfg.ctx_init,
        len(task.class_names),
        class_specific,
        torch.Generator().manual_seed(task.seed),
        cfg.init_mode,
    )


def assemble(base_embeds: torch.Tensor, ctx: torch.Tensor, ctx_positions: torch.Tensor) -> torch.Tensor:
    """Put context vectors into prompt embeddings.

    base_embeds: (..., C, L, w) token embeddings; ctx: (..., C, n_ctx, w) (broadcast over leading dims);
    ctx_positions: (C, n_ctx). Returns (..., C, L, w), differentiable w.r.t. ctx.
    """
    lead = torch.broadcast_shapes(base_embeds.shape[:-2], ctx.shape[:-2])
    base = base_embeds.expand(*lead, *base_embeds.shape[-2:])
    index = (
        ctx_positions.expand(*lead[:-1], *ctx_positions.shape)
        .unsqueeze(-1)
        .expand(*lead, ctx_positions.shape[1], base.shape[-1])
    )
    return base.scatter(-2, index, ctx.expand(*lead, *ctx.shape[-2:]).to(base.dtype))


def init_context(
    tower: PromptTower,
    tokens: TextTokens,
    n_ctx: int,
    ctx_init: str | None,
    n_classes: int,
    class_specific: bool,
    generator: torch.Generator,
    mode: CtxInitMode = "words",
) -> torch.Tensor:
    """Context vectors (n_ctx, w) or (C, n_ctx, w), ``n_ctx`` as the config resolved it (``PromptLearningConfig``:
    with ctx_init in ``words`` mode, its word count, which ``check_prompts_fit`` has matched to its tokens).

    With ``ctx_init``: ``words``, its token embeddings, one per token (the reference CoOp's CTX_INIT);
    ``zeros_then_words``, ``n_ctx`` vectors, zeros and then the token embeddings in the last slots
    (BeierZhu/Prompt-align ``trainers/prograd.py`` ``PromptLearner.__init__``). Without: N(0, 0.02).
    """
    if ctx_init:
        ids = torch.tensor(context_init_ids(tokens, ctx_init))
        with torch.no_grad():
            words = tower.embed_tokens(ids).detach().float().clone()  # (len(ids), w)
        if mode == "words":
            if len(ids) != n_ctx:
                raise ValueError(
                    f"ctx_init {ctx_init!r} has {len(ids)} tokens, not the {n_ctx} context vectors: with "
                    "ctx_init the context is its words (n_ctx as the config resolves it)"
                )
            return words
        if n_ctx < len(ids):
            raise ValueError(f"ctx_init {ctx_init!r} has {len(ids)} tokens, more than the {n_ctx} context vectors")
        ctx = torch.zeros(n_ctx, words.shape[1], dtype=words.dtype, device=words.device)
        ctx[n_ctx - len(ids) :] = words
        return ctx
    shape = (n_classes, n_ctx, tower.width) if class_specific else (n_ctx, tower.width)
    return torch.randn(shape, generator=generator) * 0.02
