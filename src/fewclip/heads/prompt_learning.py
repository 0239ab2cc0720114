"""What CoOp and CoCoOp share: prompt layouts, context initialisation, the schedule and the training loop.

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

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..metrics import summarize
from .artifacts import DamagedArtifact, read_tensors, write_tensors
from .base import FeatureSet, Task, check_loss
from .schedule import Schedule, lr_at_epoch, lr_at_step, schedules_agree
from .selection import BestEpoch, SelectRule, Selection

Position = Literal["end", "middle", "front"]
CtxInitMode = Literal["words", "zeros_then_words"]  # how ctx_init fills the context (``init_context``)
ViewSampling = Literal["per_image", "pool"]
DROP_LAST_HELP = ("Drop each epoch's last partial batch when there are at least batch_size training images, as "
                  "Dassl's loader does (the reference code's); false: train on it too.")
VIEWS_HELP = ("With augment_views: 'pool' cuts each epoch's batches from all N views of every image, shuffled "
              "together (the CLAP repository's adapters); 'per_image' takes one random view of each image per epoch.")
log = logging.getLogger(__name__)


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


def ctx_init_words(ctx_init: str) -> int:
    """How many words ``ctx_init`` has ('_' separates words too): the reference CoOp and ProGrad count the
    context's vectors from them (``len(ctx_init.split(" "))``)."""
    return len(ctx_init.replace("_", " ").split())


def context_init_ids(tokens: Any, words: str) -> list[int]:
    """Token ids of ``ctx_init`` words ("a photo of a" -> 4 ids); their count becomes n_ctx."""
    ids = tokens.word_ids(words.replace("_", " ").strip())
    if not ids:
        raise ValueError(f"ctx_init {words!r} has no tokens")
    return ids


def name_and_period_ids(tokens: Any, name: str) -> tuple[list[int], list[int]]:
    """Ids of ``name + "."`` tokenised together, split after the name's own token count (as the reference
    CoOp splits them for ``middle`` and ``front``): (the name's part, the period's part)."""
    ids = tokens.word_ids(name + ".")
    count = len(tokens.word_ids(name))
    return ids[:count], ids[count:]


def build_layout(tokens: Any, class_names: Sequence[str], n_ctx: int, position: Position, max_positions: int,
                 key: str = "coop", n_ctx_key: str | None = None) -> PromptLayout:
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
            raise ValueError(prompt_overflow_message(key, n_ctx_key or f"{key}.n_ctx", name, n_ctx, len(ids) - n_ctx,
                                                     len(ids) - n_ctx - 3, max_positions))  # SOS, '.', EOT
        rows.append(ids)
        ctx_rows.append(ctx_pos)
        eots.append(len(ids) - 1)
    length = max(len(r) for r in rows)
    token_ids = torch.tensor([r + [eot] * (length - len(r)) for r in rows], dtype=torch.long)
    return PromptLayout(token_ids, torch.tensor(ctx_rows, dtype=torch.long), torch.tensor(eots, dtype=torch.long))


def prompt_overflow_message(key: str, n_ctx_key: str, name: str, n_ctx: int, without_context: int, name_tokens: int,
                            limit: int) -> str:
    """What to change when a class prompt does not fit: the name alone, or the context on top of it."""
    if without_context > limit:  # no context length can help: only the name can change
        return (f"{key}: the prompt for class {name!r} needs {without_context} tokens before any context "
                f"({name_tokens} for the name + SOS, '.', EOT) but the model has {limit} text positions; "
                f"shorten the class name (dataset.rename)")
    fix = (f"lower {n_ctx_key} to at most {limit - without_context}" if n_ctx_key.endswith("n_ctx")
           else f"use fewer words in {n_ctx_key} (at most {limit - without_context} tokens)")
    return (f"{key}: the prompt for class {name!r} needs {n_ctx + without_context} tokens ({n_ctx} context + "
            f"{name_tokens} for the name + SOS, '.', EOT) but the model has {limit} text positions; "
            f"{fix}, or shorten the class name (dataset.rename)")


def check_prompts_fit(task: Any, n_ctx: int, ctx_init: str | None, position: Position, key: str,
                      mode: CtxInitMode = "words") -> None:
    """Fail before any training if a class prompt (context + name + SOS, '.', EOT) exceeds the positions."""
    from .prompt_fit import text_positions

    if task.backbone is None:
        raise ValueError(f"{key} needs the backbone's text tower (Task.backbone is None)")
    tokens = task.backbone.tokens
    if ctx_init:  # the config counted ctx_init's words (n_ctx, or what n_ctx must hold): each must be one token
        ids = context_init_ids(tokens, ctx_init)
        words = ctx_init_words(ctx_init)
        if len(ids) != words:
            raise ValueError(
                f"{key}.ctx_init {ctx_init!r}: its {words} word(s) are {len(ids)} tokens for this model's tokenizer, "
                f"and the context takes one vector per word; use words the tokenizer keeps whole, or set "
                f"{key}.ctx_init: null and {key}.n_ctx to the context length")
    n_ctx_key = f"{key}.ctx_init" if ctx_init and mode == "words" else f"{key}.n_ctx"  # the key that sets the length
    build_layout(tokens, task.class_names, n_ctx, position, text_positions(task.backbone), key, n_ctx_key)


def assemble(base_embeds: torch.Tensor, ctx: torch.Tensor, ctx_positions: torch.Tensor) -> torch.Tensor:
    """Put context vectors into prompt embeddings.

    base_embeds: (..., C, L, w) token embeddings; ctx: (..., C, n_ctx, w) (broadcast over leading dims);
    ctx_positions: (C, n_ctx). Returns (..., C, L, w), differentiable w.r.t. ctx.
    """
    lead = torch.broadcast_shapes(base_embeds.shape[:-2], ctx.shape[:-2])
    base = base_embeds.expand(*lead, *base_embeds.shape[-2:])
    index = ctx_positions.expand(*lead[:-1], *ctx_positions.shape).unsqueeze(-1).expand(*lead, ctx_positions.shape[1], base.shape[-1])
    return base.scatter(-2, index, ctx.expand(*lead, *ctx.shape[-2:]).to(base.dtype))


def init_context(tower: Any, tokens: Any, n_ctx: int, ctx_init: str | None, n_classes: int,
                 class_specific: bool, generator: torch.Generator,
                 mode: CtxInitMode = "words") -> tuple[torch.Tensor, int]:
    """Context vectors (n_ctx, w) or (C, n_ctx, w) and their count.

    With ``ctx_init``: ``words``, its token embeddings, one per token, whose count overrides ``n_ctx``
    (the reference CoOp's CTX_INIT); ``zeros_then_words``, ``n_ctx`` vectors, zeros and then the token
    embeddings in the last slots (BeierZhu/Prompt-align ``trainers/prograd.py`` ``PromptLearner.__init__``).
    Without: N(0, 0.02).
    """
    if ctx_init:
        ids = torch.tensor(context_init_ids(tokens, ctx_init))
        with torch.no_grad():
            words = tower.embed_tokens(ids).detach().float().clone()  # (len(ids), w)
        if mode == "words":
            return words, len(ids)
        if n_ctx < len(ids):
            raise ValueError(f"ctx_init {ctx_init!r} has {len(ids)} tokens, more than the {n_ctx} context vectors")
        ctx = torch.zeros(n_ctx, words.shape[1], dtype=words.dtype, device=words.device)
        ctx[n_ctx - len(ids):] = words
        return ctx, n_ctx
    shape = (n_classes, n_ctx, tower.width) if class_specific else (n_ctx, tower.width)
    return torch.randn(shape, generator=generator) * 0.02, n_ctx


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    warmup_lr: float
    schedule: Schedule = "fewclip"  # the cosine's span after warm-up (fewclip.heads.schedule)
    drop_last: bool = False  # Dassl's train loader: drop an epoch's last partial batch (see ``batch_count``)
    views: ViewSampling = "per_image"  # with cached augmented views: how an epoch draws them (``epoch_batches``)
    per_step: bool = False  # anneal every optimiser step over all epochs' steps, no warm-up (Tip-Adapter-F)

    def __post_init__(self) -> None:
        if self.per_step and self.warmup_epochs:
            raise ValueError("a per-step cosine has no warm-up: set warmup_epochs to 0")

    def lr_at(self, epoch: int) -> float:
        """The learning rate epoch ``epoch`` (0-based) trains at (its first step's, with ``per_step``)."""
        if self.per_step:
            return lr_at_step(epoch, self.epochs, self.lr)  # step epoch * k of epochs * k: the same angle
        return lr_at_epoch(epoch, self.epochs, self.lr, self.warmup_epochs, self.warmup_lr, self.schedule)

    def key_values(self) -> dict[str, Any]:
        """The settings a checkpoint's key hashes; ``schedule``, ``drop_last`` and ``views`` only where they
        differ from fewclip's earlier behaviour, so a checkpoint written before they existed still resumes
        when nothing it trained on changed."""
        values = asdict(self)
        if self.schedule == "fewclip" or schedules_agree(self.epochs, self.warmup_epochs):
            del values["schedule"]
        for name, before in (("drop_last", False), ("views", "per_image"), ("per_step", False)):
            if values[name] == before:
                del values[name]
        return values


def batch_count(n_images: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch over ``n_images``. Dassl's train loader (``dassl/data/data_manager.py``
    ``build_data_loader``: ``drop_last=is_train and len(data_source) >= batch_size``) drops the last
    partial batch, but keeps a lone short batch when there are fewer images than one batch."""
    if drop_last and n_images >= batch_size:
        return n_images // batch_size
    return -(-n_images // batch_size)


def epoch_batches(train: FeatureSet, settings: TrainSettings,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One epoch's (features (m, d), labels (m,), batches of row indices into them).

    Without views: the plain features in a random order. With cached views (n, V, d), ``per_image`` takes one
    random view of every image (as Dassl's loader augments each image once an epoch); ``pool`` shuffles all
    n * V views and cuts the epoch's batches from them (jusiro/CLAP ``trainers/adapters.py``
    ``TrainerXCostume.run_epoch``: as many batches as the image loader has, sliced from the shuffled pool).
    """
    n, size = len(train.labels), settings.batch_size
    if train.views is not None and settings.views == "pool":
        x = train.views.flatten(0, 1)  # image-major: image i's views are rows i*V .. i*V + V-1
        y = train.labels.repeat_interleave(train.views.shape[1])
    else:
        x, y = train.features, train.labels
    order = torch.randperm(len(y), generator=generator)
    if train.views is not None and settings.views == "per_image":
        pick = torch.randint(train.views.shape[1], (n,), generator=generator)
        x = train.views[torch.arange(n), pick]
    count = batch_count(n, size, settings.drop_last)
    return x, y, [order[i * size : (i + 1) * size] for i in range(count)]


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run_key(module: nn.Module, settings: TrainSettings, seed: int, n_classes: int, train: FeatureSet,
            val: FeatureSet | None, extra: str = "") -> str:
    """What a checkpoint must match to be resumed: the schedule, the seed, the initial parameters, the
    features and labels, and ``extra`` (the head's class names, config, backbone)."""
    digest = hashlib.sha256(json.dumps([settings.key_values(), seed, n_classes, extra]).encode())
    named = sorted(module.state_dict().items()) + [("train.x", train.features), ("train.y", train.labels)]
    if val is not None:
        named += [("val.x", val.features), ("val.y", val.labels)]
    for name, tensor in named:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def head_checkpoint_key(task: Task, config: Any) -> str:
    """What else a prompt learner's checkpoint depends on: class names, the head's config, the backbone."""
    fingerprint = getattr(task.backbone, "fingerprint", None)
    return json.dumps({"classes": list(task.class_names), "config": config.key_values(task.class_names),
                       "backbone": fingerprint() if callable(fingerprint) else None}, sort_keys=True, default=str)


def _save_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                     history: list[dict[str, float]], best: BestEpoch, key: str) -> None:
    tensors = {f"model.{k}": v for k, v in _module_state(module).items()}
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{i}.{name}"] = value.detach().clone()
    if best.state is not None:
        tensors.update({f"best.{k}": v for k, v in best.state.items()})
    meta = {"epoch": epoch, "history": history, "best_epoch": best.epoch,
            "best_score": list(best.score) if best.score is not None else None, "run_key": key}
    # The epoch and history travel in the same file as their tensors: one rename commits both, so a
    # kill can never leave tensors of one epoch beside the history of another. The file carries a
    # digest of its tensors, so a damaged checkpoint is detected rather than resumed from.
    write_tensors(path, tensors, {"fewclip": json.dumps(meta)}, self_check=True)


def _load_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                     key: str, select: SelectRule) -> tuple[int, list, BestEpoch] | None:
    """The saved (epoch, history, best), loaded into module and optimizer; None when there is no
    checkpoint, it belongs to another run (other settings, data or initial parameters), or it is
    damaged (then it is deleted with a warning and training starts over)."""
    if not path.is_file():
        return None
    try:
        tensors, metadata = read_tensors(path, what="checkpoint")
        meta = json.loads(metadata.get("fewclip", "{}"))
    except (DamagedArtifact, ValueError) as err:  # ValueError: metadata that is not JSON
        log.warning("discarding checkpoint %s: %s; training this unit starts over", path,
                    err.reason if isinstance(err, DamagedArtifact) else f"unreadable metadata ({err})")
        path.unlink(missing_ok=True)
        return None
    if not isinstance(meta, dict) or meta.get("run_key") != key:
        log.info("ignoring checkpoint %s: it belongs to another run (settings, data or initialisation changed)", path)
        return None
    return _restore(tensors, meta, module, optimizer, select)


def _restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any], module: nn.Module,
             optimizer: torch.optim.Optimizer, select: SelectRule) -> tuple[int, list, BestEpoch]:
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, field = name.split(".", 2)
            state["state"].setdefault(int(index), {})[field] = value
    optimizer.load_state_dict(state)
    best = BestEpoch(select)
    if meta["best_epoch"] is not None:
        best = BestEpoch(select, meta["best_epoch"], tuple(meta["best_score"]),
                         {k[5:]: v for k, v in tensors.items() if k.startswith("best.")})
    return meta["epoch"], meta["history"], best


def train_prompt_module(
    module: nn.Module,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    train: FeatureSet,
    val: FeatureSet | None,
    n_classes: int,
    settings: TrainSettings,
    seed: int,
    checkpoint: Path | None = None,
    val_logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    checkpoint_key: str = "",
    progress: bool = False,
    select: SelectRule = "auto",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    train_step: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> tuple[list[dict[str, float]], Selection, dict[str, torch.Tensor]]:
    """SGD over ``module``'s trainable parameters with warm-up + cosine, one epoch at a time (with
    ``settings.per_step``, the cosine's rate is set before every optimiser step instead of every epoch).

    Leaves the epoch chosen by ``select`` (``fewclip.heads.selection``; the last epoch without val) in
    ``module`` and returns (history, that selection, state of the last epoch). With ``checkpoint``,
    state is saved after every epoch and a killed run
    resumes from the last saved epoch (same result as an uninterrupted run: the data order of each
    epoch is drawn from a generator seeded by (seed, epoch)). A checkpoint left by a run with other
    settings, seed, data, initial parameters, ``checkpoint_key`` or ``select`` is ignored and overwritten.
    ``progress`` shows a bar over the epochs (rate, ETA, loss and val macro-F1); ``on_epoch`` is called
    with each epoch's history row as it ends (live tracking). ``train_step(x, y)`` replaces the
    cross-entropy step for heads with their own loss or gradient (it fills the parameters' ``.grad`` and
    returns the loss); ``make_optimizer`` replaces SGD (the loop still sets each epoch's learning rate).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = (make_optimizer(params) if make_optimizer is not None else
                 torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay))
    history: list[dict[str, float]] = []
    keeper = BestEpoch(select)
    start_epoch = 0
    key = ""
    if checkpoint is not None:  # the rule is in the key: it decides which state the checkpoint keeps as "best"
        key = run_key(module, settings, seed, n_classes, train, val, json.dumps([checkpoint_key, select]))
        resumed = _load_checkpoint(checkpoint, module, optimizer, key, select)
        if resumed is not None:
            start_epoch, history, keeper = resumed
    bar = tqdm(range(start_epoch, settings.epochs), initial=start_epoch, total=settings.epochs, desc="epochs",
               unit="epoch", leave=False, disable=not progress)
    for epoch in bar:
        lr = settings.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y, batches = epoch_batches(train, settings, torch.Generator().manual_seed(seed * 100003 + epoch))
        total, seen = 0.0, 0
        module.train()
        for step, idx in enumerate(batches):
            if settings.per_step:  # every epoch has len(batches) steps (batch_count depends on the image count)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at_step(epoch * len(batches) + step, settings.epochs * len(batches), settings.lr)
            optimizer.zero_grad(set_to_none=True)
            if train_step is None:
                loss = nn.functional.cross_entropy(logits_fn(x[idx]).float(), y[idx])
                loss.backward()
                value = loss.item()
            else:
                value = train_step(x[idx], y[idx])
            check_loss(value, epoch + 1, optimizer.param_groups[0]["lr"])
            optimizer.step()
            total, seen = total + value * len(idx), seen + len(idx)
        module.eval()
        row = {"epoch": float(epoch + 1), "train_loss": total / seen, "lr": lr}
        if val is not None and len(val):
            with torch.no_grad():
                val_logits = (val_logits_fn or logits_fn)(val.features).float()
            scores = summarize(val.labels.numpy(), val_logits.argmax(-1).numpy(), n_classes)
            val_loss = float(nn.functional.cross_entropy(val_logits, val.labels))
            row.update(val_accuracy=scores["accuracy"], val_macro_f1=scores["macro_f1"], val_loss=val_loss)
        keeper.observe(epoch + 1, row, lambda: _module_state(module))
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        bar.set_postfix({k: f"{row[k]:.3f}" for k in ("train_loss", "val_macro_f1") if k in row}, refresh=False)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, module, optimizer, epoch + 1, history, keeper, key)
    last = _module_state(module)
    selection, kept = keeper.choose(history, val.labels if val is not None else None, n_classes)
    if kept is not None:  # the rule's candidate, kept while training
        module.load_state_dict(kept)
    return history, selection, last
