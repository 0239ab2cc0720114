"""The settings every prompt learner shares (CoOp, CoCoOp and the heads built on them): context, schedule,
epoch selection, calibration. Each head's block subclasses ``PromptLearningConfig`` and changes defaults
or adds its own keys.

``n_ctx`` is resolved here, once, where the config is read: with ``ctx_init`` set, the context is one
vector per word of it (as in the reference CoOp), so ``n_ctx`` becomes that word count; an explicit
``n_ctx`` that disagrees is an error naming both keys. A block with the key ``ctx_init_mode`` (ProGrad's)
may instead ask for ``zeros_then_words``: ``n_ctx`` vectors, zeros and then the words, as ProGrad's
reference builds its context; ``n_ctx`` then stays as given and must hold the words. A config thus always
holds the context length that trains, and a unit's key (which hashes the block) changes only when that
length does; the heads take ``n_ctx`` from it and never count ctx_init's words again (``learning.check_prompts_fit``
checks that the tokenizer keeps each word one token, ``learning.init_context`` fills ``n_ctx`` vectors).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

from pydantic import Field, model_validator

from fewclip.configbase import ConfigBlock
from fewclip.training.features_loop import DROP_LAST_HELP, FeatureTrainSettings, settings_of
from fewclip.training.schedule import SCHEDULE_HELP, EpochsByShots, Schedule, epochs_for, schedules_agree
from fewclip.training.selection import SELECT_HELP, SelectRule


CtxInitMode = Literal["words", "zeros_then_words"]  # how ctx_init fills the context (``learning.init_context``)


def ctx_init_words(ctx_init: str) -> int:
    """How many words ``ctx_init`` has ('_' separates words too): the reference CoOp and ProGrad count the
    context's vectors from them (``len(ctx_init.split(" "))``)."""
    return len(ctx_init.replace("_", " ").split())


def ends_in_punctuation(name: str) -> bool:
    """Whether a class name's last character is neither a letter, a digit nor a space: CLIP's BPE may then
    merge it with the prompt's period."""
    stripped = name.rstrip()
    return bool(stripped) and not stripped[-1].isalnum()


CTX_INIT_MODE_HELP = (
    "How ctx_init fills the context: 'words': one vector per word, n_ctx is their count (CoOp's "
    "CTX_INIT); 'zeros_then_words': n_ctx vectors, zeros then the words' vectors in the last slots "
    "(ProGrad's CTX_INIT; n_ctx at least the word count)."
)


def resolve_n_ctx(n_ctx: Any, ctx_init: Any, n_ctx_given: bool, mode: CtxInitMode = "words") -> Any:
    """The context length a block trains with: ``ctx_init``'s word count when it is set, else ``n_ctx``;
    with ``mode`` ``zeros_then_words``, ``n_ctx`` (which must hold the words).

    An ``n_ctx`` the user gave (``n_ctx_given``) that differs from ``ctx_init``'s count is an error.
    Values of the wrong type pass through unchanged (the fields' own validation reports them).
    """
    if not isinstance(ctx_init, str) or not ctx_init.strip():
        return n_ctx
    words = ctx_init_words(ctx_init)
    if mode == "zeros_then_words":
        if isinstance(n_ctx, int) and n_ctx < words:
            raise ValueError(
                f"n_ctx {n_ctx} cannot hold ctx_init {ctx_init!r} ({words} word(s)): with ctx_init_mode "
                f"zeros_then_words the context is n_ctx vectors ending in the words; raise n_ctx to at least "
                f"{words}, or set ctx_init_mode: words to make the words the whole context"
            )
        return n_ctx
    if n_ctx_given and n_ctx != words:
        raise ValueError(
            f"n_ctx {n_ctx} conflicts with ctx_init {ctx_init!r}, whose {words} word(s) are the context "
            f"({words} vector(s)); drop n_ctx to start from these words, or set ctx_init: null to learn "
            f"{n_ctx} randomly initialised context vectors"
        )
    return words


class PromptLearningConfig(ConfigBlock):
    """Context, schedule (SGD, warm-up + cosine as ``schedule`` says), epoch selection and calibration of a
    prompt learner."""

    # keys that follow another one: a variant that changes ctx_init and not n_ctx lets n_ctx follow it
    derived_keys: ClassVar[dict[str, str]] = {"n_ctx": "ctx_init"}

    n_ctx: int = Field(
        16,
        ge=1,
        description="Learnable context tokens; with ctx_init, its word count (give n_ctx too only if it agrees).",
    )
    ctx_init: str | None = Field(
        None,
        description="Words whose token embeddings initialise the context "
        "(one vector per word; each word must be one token of the model's tokenizer).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast for the text tower.")
    epochs: EpochsByShots = Field(
        50,
        description="Epochs, or {shots: epochs} per shot budget, e.g. {1: 50, "
        "2: 100, 4: 100, 8: 200, 16: 200} (an unlisted budget takes the largest "
        "listed one below it; below the smallest, the smallest).",
    )
    batch_size: int = Field(32, ge=1, description="Support images per SGD step.")
    lr: float = Field(0.002, gt=0, description="SGD learning rate after warm-up (cosine-annealed).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay.")
    warmup_epochs: int = Field(1, ge=0, description="Epochs at the constant warmup_lr before the cosine.")
    warmup_lr: float = Field(1e-5, gt=0, description="Constant learning rate during warm-up.")
    schedule: Schedule = Field("dassl", description=SCHEDULE_HELP)
    drop_last: bool = Field(True, description=DROP_LAST_HELP)
    augment_views: int = Field(
        0,
        ge=0,
        description="Train on N cached augmented views per image (random resized "
        "crop + flip, encoded once by the features stage); 0: the plain features.",
    )
    select: SelectRule = Field("auto", description=SELECT_HELP)
    calibrate: bool = Field(
        True, description="Temperature-scale the logits on the validation split (argmax unchanged)."
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_n_ctx(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        ctx_init = data.get("ctx_init", cls.model_fields["ctx_init"].default)
        n_ctx = data.get("n_ctx", cls.model_fields["n_ctx"].default)
        mode_field = cls.model_fields.get("ctx_init_mode")  # only blocks that offer ProGrad's init have it
        mode = data.get("ctx_init_mode", mode_field.default if mode_field is not None else "words")
        resolved = resolve_n_ctx(n_ctx, ctx_init, "n_ctx" in data, mode)
        return data if resolved == n_ctx else {**data, "n_ctx": resolved}

    @property
    def init_mode(self) -> CtxInitMode:
        """How ``ctx_init`` fills the context: one vector per word, unless the block offers ProGrad's
        ``ctx_init_mode``."""
        return getattr(self, "ctx_init_mode", "words")

    @property
    def context_words(self) -> int:
        """``ctx_init``'s word count (0 without it): ``n_ctx`` in ``words`` mode, the filled last slots otherwise."""
        return ctx_init_words(self.ctx_init) if self.ctx_init else 0

    def epochs_for(self, shots: int) -> int:
        """The epochs of a shot budget (an unlisted budget takes the largest listed one below it)."""
        return epochs_for(self.epochs, shots)

    def settings(self, shots: int) -> FeatureTrainSettings:
        return settings_of(self, self.epochs_for(shots))

    def key_values(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The block's values, without ``schedule`` where it trains as fewclip's earlier default did (every
        epoch count of the block), so only units whose rates changed get a new key; and with
        ``name_tokens`` where a class name ends in punctuation, whose prompt tokens changed when names
        began to be tokenised with their period (``learning.build_layout``)."""
        values = super().key_values(class_names)
        counts = self.epochs.values() if isinstance(self.epochs, dict) else [self.epochs]
        if self.schedule == "fewclip" or all(schedules_agree(count, self.warmup_epochs) for count in counts):
            del values["schedule"]
        if any(ends_in_punctuation(name) for name in class_names):
            values["name_tokens"] = "with period"
        return values
