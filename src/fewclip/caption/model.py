"""The captioner: a frozen CLIP vision encoder, a frozen GPT-2 decoder with new cross-attention, one PEFT method.

The encoder is any backbone that offers ``image_tokens`` (``backbones.protocol``): the image tower's output
tokens (a Hugging Face CLIP's ``last_hidden_state``: CLS + patch tokens, *before* ``post_layernorm``, which
CLIP trains only on the pooled CLS token). ``model.encoder`` names it and ``model.encoder_library`` its library
(``hf`` by default; ``open_clip`` for an OpenCLIP ViT); a library that does not offer ``image_tokens`` is refused
when the config is read. A library user may also hand ``CaptionModel`` any backbone object. A trainable linear layer projects the tokens to
the decoder width when the widths differ. Every GPT-2 block cross-attends to all of them (``add_cross_attention``); the
CLS token stays in the memory as a global summary and attention maps drop it (``caption.attention``).

What trains: the new cross-attention (+ its layer norm), the projection, and one method per unit, registered in
``caption.methods`` (``untrained``, ``adapter``, ``prefix``, ``lora``): ``untrained``, the baseline of the
report, trains nothing.

All new weights are drawn from a generator seeded by ``seed``, so the ``untrained`` model of a seed is
exactly the starting point of that seed's trained methods.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from typing import Any, Iterator, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from fewclip.backbones import ModelConfig, load_backbone, resolve_device
from fewclip.backbones.capabilities import capability_problem, model_offers, require
from fewclip.backbones.model_source import WORLD_ALIAS, WORLD_DECODER_ALIAS, ModelSource, resolve_model
from fewclip.backbones.protocol import Backbone
from fewclip.caption.methods import CAPTION_METHODS
from fewclip.configbase import ConfigBlock

Method = Literal[tuple(CAPTION_METHODS.names())]  # type: ignore[valid-type]  # the registered caption methods
NEEDS = frozenset({"image_tokens"})  # what every method needs of its encoder (backbones.protocol.CAPABILITIES)


class CaptionModelConfig(ConfigBlock):
    """Which encoder and decoder, and how the decoder is tuned."""

    encoder: str = Field(
        WORLD_ALIAS,
        description="The encoder CLIP, as model.id names it for encoder_library (hf: hub id, local folder, or "
        "fewclip/world-clip).",
    )
    encoder_library: str = Field(
        "hf",
        description="The encoder's backbone library, as model.library (hf, open_clip, ...): any that offers the "
        "image tower's tokens.",
    )
    encoder_pretrained: str | None = Field(None, description="open_clip only: the encoder's pretrained tag or file.")
    encoder_revision: str | None = Field(None, description="Hub revision of the encoder (hf only).")
    decoder: str = Field("gpt2", description="GPT-2-family hub id (e.g. gpt2) or local folder with its tokenizer.")
    decoder_revision: str | None = Field(None, description="Hub revision of the decoder.")
    method: Method = Field("adapter", description="adapter, prefix, lora, or untrained (no tuning: the baseline).")
    adapter_bottleneck: int | None = Field(
        None,
        ge=1,
        description="Adapter width; None: n_embd/2 - 30 as the "
        "reference (354 for GPT-2), at least n_embd/8 for tiny decoders.",
    )
    prefix_length: int = Field(20, ge=1, description="Learned prefix tokens per layer (prefix tuning).")
    lora_rank: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank).")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on LoRA's input.")
    attention_layer: int = Field(-1, description="Decoder block whose cross-attention the maps show (-1: last).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32, or bf16 autocast for encoding, training and decoding."
    )
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")

    @model_validator(mode="after")
    def _encoder_offers_tokens(self) -> "CaptionModelConfig":
        encoder = self.encoder_model()  # an unknown library, or a pretrained tag for hf: the model block's errors
        problem = capability_problem("captioning", NEEDS, self.encoder_library, model_offers(encoder), self.encoder)
        if problem:
            raise ValueError(problem.replace("model.library", "model.encoder_library"))
        return self

    def encoder_model(self) -> ModelConfig:
        """The encoder as a classification ``model`` block (library, id, pretrained tag, revision, precision)."""
        return ModelConfig(
            library=self.encoder_library,
            id=self.encoder,
            pretrained=self.encoder_pretrained,
            revision=self.encoder_revision,
            precision=self.precision,
            device=self.device,
        )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' load report and progress bar: the new cross-attention weights are "missing" from
    the decoder, as intended."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# caption key -> (what it takes, the model fewclip ships for it, that model's description), for messages
MODEL_KEYS = {
    "model.encoder": ("a Hugging Face CLIP", WORLD_ALIAS, "the world CLIP"),
    "model.decoder": ("a Hugging Face GPT-2", WORLD_DECODER_ALIAS, "the world decoder (a tiny GPT-2)"),
    "clipscore_model": ("a Hugging Face CLIP", WORLD_ALIAS, "the world CLIP"),
}
_SHIPPED_CLIP = re.compile(
    r"use '[^']*', the (shipped world CLIP|CLIP shipped with fewclip)|use the CLIP shipped with fewclip \([^)]*\)"
)


def caption_key_message(key: str, message: str) -> str:
    """A model error of classification's (which speaks of model.id and the world CLIP) for a captioning key: it
    names the key, the kind of model the key takes and the model fewclip ships for it."""
    kind, alias, shipped = MODEL_KEYS[key]
    message = message.replace("model.id", key).replace("a Hugging Face CLIP", kind).replace("/clip:", "/model:")
    return _SHIPPED_CLIP.sub(f"use {alias!r}, {shipped} shipped with fewclip", message)


def resolve_caption_model(key: str, model_id: str, revision: str | None = None) -> ModelSource:
    """``resolve_model`` for a captioning key, its errors in the key's words (``caption_key_message``)."""
    try:
        return resolve_model(model_id, revision)
    except OSError as err:  # FileNotFoundError too
        raise type(err)(caption_key_message(key, str(err))) from None


def load_encoder(config: CaptionModelConfig) -> Backbone:
    """The CLIP ``model.encoder`` names, as a backbone of ``model.encoder_library`` (its errors name
    ``model.encoder``)."""
    try:
        return load_backbone(config.encoder_model())
    except OSError as err:  # FileNotFoundError too
        raise type(err)(caption_key_message("model.encoder", str(err))) from None


def _load_decoder(config: CaptionModelConfig) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    source = resolve_caption_model("model.decoder", config.decoder, config.decoder_revision)
    options: dict[str, Any] = dict(revision=config.decoder_revision, local_files_only=source.local_only)
    try:
        with quiet_loading():
            # eager attention: it returns the cross-attention weights the attention maps read
            decoder = GPT2LMHeadModel.from_pretrained(
                source.location, add_cross_attention=True, dtype=torch.float32, attn_implementation="eager", **options
            )
            tokenizer = AutoTokenizer.from_pretrained(source.location, **options)
    except OSError as err:
        raise OSError(f"model.decoder: cannot load GPT-2 decoder {config.decoder!r}: {err}") from err
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(
            f"model.decoder: the tokenizer of {config.decoder!r} has no BOS or EOS token; "
            "captions need both (set bos_token and eos_token in its tokenizer_config.json)"
        )
    return decoder, tokenizer


class CaptionModel(nn.Module):
    """Frozen CLIP vision encoder -> projection -> GPT-2 with cross-attention and one PEFT method.

    ``encode_images(pixels)`` gives encoder tokens (B, T, encoder width); ``memory`` projects them to
    the decoder width; ``decoder_step`` runs the decoder with an optional KV cache; ``loss`` is the
    teacher-forced caption loss. Only ``trainable_parameters()`` ever receive gradients.

    ``encoder``: the backbone whose image tokens are read (default: ``model.encoder``'s CLIP, loaded); it is
    held outside the module tree (frozen, never saved with the captioner).
    """

    def __init__(self, config: CaptionModelConfig, seed: int = 0, encoder: Backbone | None = None) -> None:
        super().__init__()
        self.config, self.seed = config, seed
        self.device_ = resolve_device(config.device)
        encoder = encoder or load_encoder(config)
        require(config.method, NEEDS, encoder)
        self.encoder_backbone = [encoder]  # a list: not registered as a submodule
        self.transform = encoder.transform
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the fresh cross-attention is drawn at load time
            self.decoder, self.tokenizer = _load_decoder(config)
            self._build_trainable(config)
        self.to(self.device_)
        self.eval()  # dropout only while training (train_captioner switches it on)

    def _build_trainable(self, config: CaptionModelConfig) -> None:
        gpt = self.decoder.config
        self.requires_grad_(False)
        encoder_width = self.encoder_width
        self.projection: nn.Module = (
            nn.Linear(encoder_width, gpt.n_embd) if encoder_width != gpt.n_embd else nn.Identity()
        )
        self.adapters: nn.ModuleList | None = None  # the adapter method's, one per block
        self.prefix: nn.Parameter | None = None  # the prefix method's, (layer, key/value, head, prefix, head_dim)
        method = CAPTION_METHODS.get(config.method)
        own = method.build(self)  # draws its new weights after the projection's, from the seeded generator
        self.requires_grad_(False)
        if not method.trains:
            return
        for block in self.decoder.transformer.h:
            block.crossattention.requires_grad_(True)
            block.ln_cross_attn.requires_grad_(True)
        self.projection.requires_grad_(True)
        for param in own:
            param.requires_grad_(True)

    # -- parameters -------------------------------------------------------------------------------

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter of everything that trains (empty for ``untrained``)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Detached copies of the trainable weights (what a trained captioner saves)."""
        return {name: p.detach().clone() for name, p in self.trainable_parameters().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy saved trainable weights in; names must match exactly."""
        params = self.trainable_parameters()
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ValueError(
                f"trainable weights do not match this caption model ({self.config.method}): "
                f"missing {missing[:3]}, unexpected {extra[:3]}; were they saved with another config?"
            )
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    # -- encoder ----------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_.type, dtype=torch.bfloat16)

    @property
    def encoder(self) -> Backbone:
        return self.encoder_backbone[0]

    def encoder_fingerprint(self) -> dict[str, Any]:
        """Everything that changes an encoder output: weights, preprocessing, precision, what is read out."""
        return self.encoder.image_tokens_fingerprint()

    @property
    def encoder_tokens(self) -> int:
        """T: 1 (CLS) + grid * grid patch tokens."""
        return self.encoder.image_token_shape[0]

    @property
    def encoder_width(self) -> int:
        return self.encoder.image_token_shape[1]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, T, encoder width) float32 encoder tokens, on the model's device."""
        return self.encoder.image_tokens(torch.as_tensor(pixels)).to(self.device_)

    def memory(self, encoder_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, encoder width) -> (B, T, n_embd): what the decoder cross-attends to."""
        return self.projection(encoder_tokens.to(self.device_))

    # -- decoder ----------------------------------------------------------------------------------

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_tokens(self) -> int:
        return 0 if self.prefix is None else self.config.prefix_length

    def new_cache(self, batch: int) -> Any:
        """An empty decoder cache; for ``prefix``, one that already holds the learned prefix."""
        from transformers import DynamicCache, EncoderDecoderCache

        self_cache = DynamicCache()
        if self.prefix is not None:
            for layer, (keys, values) in enumerate(self.prefix):
                self_cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer)
        return EncoderDecoderCache(self_cache, DynamicCache())

    def decoder_step(
        self,
        input_ids: torch.Tensor,
        memory: torch.Tensor,
        cache: Any = None,
        key_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> Any:
        """Run the decoder on ``input_ids`` (B, L), continuing ``cache`` (from ``new_cache``) when given.

        ``key_mask`` (B, past + L) marks real caption tokens (0 for right padding) among all tokens seen
        so far, prefix excluded. Positions continue from the cache. Returns the HF output (logits,
        the cache (``step_cache``), cross_attentions when asked for).
        """
        batch, length = input_ids.shape
        prefix = self.prefix_tokens
        if cache is None and prefix:
            cache = self.new_cache(batch)
        seen = cache.get_seq_length() - prefix if cache is not None else 0
        if key_mask is None:
            key_mask = torch.ones(batch, seen + length, dtype=torch.bool, device=input_ids.device)
        positions = torch.arange(seen, seen + length, device=input_ids.device)
        mask = _additive_mask(
            key_mask.bool(), positions, prefix, memory.dtype if memory.is_floating_point() else torch.float32
        )
        return self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=memory,
            **{cache_keyword(): cache},
            attention_mask=mask,
            position_ids=positions[None].expand(batch, -1),
            use_cache=cache is not None,
            output_attentions=output_attentions,
        )

    @staticmethod
    def step_cache(output: Any) -> Any:
        """The updated KV cache of a ``decoder_step`` output."""
        return getattr(output, cache_keyword())

    def loss(
        self, encoder_tokens: torch.Tensor, input_ids: torch.Tensor, key_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over the labels that are not -100 (right padding is -100)."""
        device = self.device_
        with self.autocast():
            out = self.decoder_step(input_ids.to(device), self.memory(encoder_tokens), key_mask=key_mask.to(device))
        logits = out.logits[:, :-1].float()
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].to(device).reshape(-1), ignore_index=-100
        )


@functools.cache
def cache_keyword() -> str:
    """What GPT-2's forward calls its KV cache, argument and output field alike: ``cache`` in the
    transformers releases that renamed it (``past_key_values`` there is deprecated: a FutureWarning on every
    call), ``past_key_values`` in the 5.x releases before."""
    from transformers import GPT2LMHeadModel

    return "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


def _additive_mask(key_mask: torch.Tensor, positions: torch.Tensor, prefix: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, prefix + K) additive mask: every query sees the prefix, and the caption tokens at or before
    its own position that ``key_mask`` (B, K) marks as real. Built here so prefix and padding are exact."""
    batch, keys = key_mask.shape
    causal = torch.arange(keys, device=key_mask.device)[None, :] <= positions[:, None]  # (L, K)
    allowed = causal[None] & key_mask[:, None, :]  # (B, L, K)
    allowed = torch.cat([allowed.new_ones(batch, len(positions), prefix), allowed], dim=-1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
