"""What the prompt learners' official code shares, re-implemented in plain torch for the equivalence tests:
OpenAI CLIP's text encoder as their ``TextEncoder`` runs it on prompt embeddings, ``clip.tokenize``, and
Dassl's optimiser, warm-up + cosine schedule, train loader and epoch loop.

Written from reading (never copied): KaiyangZhou/CoOp ``trainers/coop.py`` ``TextEncoder.forward`` and
``clip/model.py`` (``Transformer``, ``ResidualAttentionBlock``, ``build_attention_mask``, ``QuickGELU``),
``clip/clip.py`` ``tokenize``; KaiyangZhou/Dassl.pytorch ``dassl/optim/optimizer.py`` ``build_optimizer`` (SGD, Adam),
``dassl/optim/lr_scheduler.py`` ``build_lr_scheduler`` / ``ConstantWarmupScheduler``,
``dassl/data/data_manager.py`` ``build_data_loader``, ``dassl/engine/trainer.py`` ``TrainerX.run_epoch``.
KgCoOp and ProGrad ship a modified Dassl (``Dassl.ProGrad.pytorch``) whose optimiser, schedule and loader
are the same. The weights are the tiny test CLIP's (a Hugging Face ``CLIPModel``), read tensor by tensor,
so nothing here runs fewclip's prompt tower. The references run in fp32 (their PREC "fp32" path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F


class ReferenceCLIPText:
    """The frozen text side of CLIP: token embedding, text encoder on prompt embeddings, tokenizer."""

    def __init__(self, backbone: Any) -> None:
        model = backbone.model
        text = model.text_model
        config = text.config
        assert config.hidden_act == "quick_gelu", "OpenAI CLIP's blocks use QuickGELU"
        self.tokenizer = backbone.tokenizer
        self.token_embedding = text.embeddings.token_embedding.weight  # (vocab, w)
        self.positional_embedding = text.embeddings.position_embedding.weight  # (context_length, w)
        self.layers = list(text.encoder.layers)
        self.ln_final = text.final_layer_norm
        self.text_projection = model.text_projection.weight.T  # (w, d): x @ text_projection
        self.heads = int(config.num_attention_heads)
        self.context_length = int(config.max_position_embeddings)
        self.logit_scale = model.logit_scale.exp()  # CustomCLIP.forward: self.logit_scale.exp()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``clip.tokenize``: [SOT] + BPE + [EOT], zero-padded to the context length. (n, context_length)"""
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.tokenizer(text)["input_ids"]  # the tiny CLIP's BPE, with its SOT and EOT
            assert len(ids) <= self.context_length, text
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``clip_model.token_embedding(tokens)``: (..., L) -> (..., L, w)."""
        return self.token_embedding[tokens]

    def encode(
        self,
        prompts: torch.Tensor,
        tokenized: torch.Tensor,
        before_layer: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``TextEncoder.forward``: (n, L, w) prompt embeddings -> (n, d) at each EOT (the largest id).
        ``before_layer(i, x)``: what enters block i instead of x (TCP's ``ResidualAttentionBlock_MaPLe``)."""
        x = prompts + self.positional_embedding
        mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)  # build_attention_mask
        for index, layer in enumerate(self.layers):
            if before_layer is not None:
                x = before_layer(index, x)
            x = x + self._attention(layer, self._norm(layer.layer_norm1, x), mask)
            hidden = self._linear(layer.mlp.fc1, self._norm(layer.layer_norm2, x))
            x = x + self._linear(layer.mlp.fc2, hidden * torch.sigmoid(1.702 * hidden))  # QuickGELU
        x = self._norm(self.ln_final, x)
        return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ self.text_projection

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``clip_model.encode_text(clip.tokenize(texts))``: (n, d), unnormalised."""
        tokens = self.tokenize(texts)
        return self.encode(self.embed(tokens), tokens)

    def _attention(self, layer: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``nn.MultiheadAttention(x, x, x, attn_mask=mask)`` with the layer's projections."""
        attn = layer.self_attn
        n, length, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = (split(self._linear(p, x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads) + mask
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
        return self._linear(attn.out_proj, out)

    @staticmethod
    def _linear(linear: Any, x: torch.Tensor) -> torch.Tensor:
        return x @ linear.weight.T + linear.bias

    @staticmethod
    def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def class_prompt_tokens(
    clip: ReferenceCLIPText, prompt_prefix: str, class_names: Sequence[str], n_ctx: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``PromptLearner.__init__``'s fixed parts: ``prompt_prefix + " " + name + "."`` tokenised whole, its
    SOS embedding (``token_prefix``, (C, 1, w)) and what follows the n_ctx context slots (``token_suffix``)."""
    names = [name.replace("_", " ") for name in class_names]
    tokenized = clip.tokenize([f"{prompt_prefix} {name}." for name in names])
    embedding = clip.embed(tokenized)
    return tokenized, embedding[:, :1], embedding[:, 1 + n_ctx :]


def words_context(clip: ReferenceCLIPText, ctx_init: str, n_ctx: int) -> torch.Tensor:
    """``embedding[0, 1 : 1 + n_ctx]`` of ``clip.tokenize(ctx_init)``: the first n_ctx word vectors."""
    return clip.embed(clip.tokenize([ctx_init]))[0, 1 : 1 + n_ctx].clone()


# --- Dassl's training loop -------------------------------------------------------------------------


@dataclass
class DasslOptim:
    """The OPTIM keys the prompt learners' configs set (Dassl's defaults for the others). ``adam_eps``: Dassl's
    Adam leaves torch's default; TCP's README has it edited to 1e-3."""

    lr: float
    max_epoch: int
    batch_size: int
    warmup_epoch: int = 1
    warmup_cons_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    name: str = "sgd"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8

    def build_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """``build_optimizer`` for OPTIM.NAME sgd or adam."""
        if self.name == "adam":
            return torch.optim.Adam(
                params,
                lr=self.lr,
                weight_decay=self.weight_decay,
                betas=(self.adam_beta1, self.adam_beta2),
                eps=self.adam_eps,
            )
        assert self.name == "sgd", self.name
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, dampening=0, nesterov=False
        )


class ConstantWarmupCosine:
    """``build_lr_scheduler`` with LR_SCHEDULER "cosine", WARMUP_TYPE "constant", WARMUP_RECOUNT True: the
    constant rate for ``warmup_epoch`` steps, then torch's ``CosineAnnealingLR(T_max=max_epoch)`` counted
    from the end of the warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, optim: DasslOptim) -> None:
        self.optimizer, self.warmup, self.cons_lr = optimizer, optim.warmup_epoch, optim.warmup_cons_lr
        self.cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(optim.max_epoch))
        self.steps = 0
        if self.warmup > 0:
            self._set(self.cons_lr)

    def step(self) -> None:
        if self.steps >= self.warmup:  # the successor takes over once the warm-up has run
            self.cosine.step()
        else:
            self._set(self.cons_lr if self.steps + 1 < self.warmup else self.cosine.get_last_lr()[0])
        self.steps += 1

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def loader_batches(order: torch.Tensor, batch_size: int, drop_last: bool = True) -> list[torch.Tensor]:
    """``build_data_loader`` for training: the sampler's order cut into batches, the last partial one dropped
    when there are at least ``batch_size`` images (``drop_last=is_train and len(data_source) >= batch_size``).
    ``drop_last=False`` is not Dassl: it shows what keeping the partial batch would change."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and len(order) >= batch_size and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def dassl_train(
    params: list[torch.Tensor],
    optim: DasslOptim,
    orders: list[torch.Tensor],
    forward_backward: Callable[[torch.optim.Optimizer, torch.Tensor], float],
    drop_last: bool = True,
    after_epoch: Callable[[int], None] | None = None,
) -> list[float]:
    """``TrainerX.run_epoch`` over ``max_epoch`` epochs: each batch of ``orders[epoch]`` (the RandomSampler's
    permutation) through ``forward_backward(optimizer, batch)``, which zeroes, back-propagates and steps as
    the trainer does; the schedule steps after the epoch's last batch (``update_lr`` in ``forward_backward``),
    then ``after_epoch(epoch)`` (1-based: what a trainer's ``forward_backward`` does after ``update_lr``).
    Returns each step's loss."""
    optimizer = optim.build_optimizer(params)
    schedule = ConstantWarmupCosine(optimizer, optim)
    losses = []
    for epoch in range(optim.max_epoch):
        for batch in loader_batches(orders[epoch], optim.batch_size, drop_last):
            losses.append(forward_backward(optimizer, batch))
        schedule.step()
        if after_epoch is not None:
            after_epoch(epoch + 1)
    return losses


def fewclip_orders(n_images: int, seed: int, epochs: int) -> list[torch.Tensor]:
    """The permutation fewclip's loop draws each epoch (``epoch_batches``: ``randperm`` from a generator seeded
    by (seed, epoch)), given to the reference's sampler so both see the same batches."""
    return [
        torch.randperm(n_images, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        for epoch in range(epochs)
    ]


# --- what fewclip's fit did, so the reference can start from the same state -------------------------


class FitRecorder:
    """Records, while a prompt learner fits, the trainable state its loop starts from and the batches each
    epoch trains on (``head_module`` is the head's module, whose ``train_on_features`` is wrapped)."""

    def __init__(self, monkeypatch: Any, head_module: Any) -> None:
        from fewclip.training import features_loop as prompt_learning

        self.initial: dict[str, torch.Tensor] = {}
        self.batches: list[list[torch.Tensor]] = []
        train_on_features, epoch_batches = head_module.train_on_features, prompt_learning.epoch_batches

        def recording_train(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            self.initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return train_on_features(module, *args, **kwargs)

        def recording_batches(*args: Any, **kwargs: Any) -> Any:
            x, y, batches = epoch_batches(*args, **kwargs)
            self.batches.append([b.clone() for b in batches])
            return x, y, batches

        monkeypatch.setattr(head_module, "train_on_features", recording_train)
        monkeypatch.setattr(prompt_learning, "epoch_batches", recording_batches)
