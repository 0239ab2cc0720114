"""The caption methods, one registered entry each (``CAPTION_METHODS``, ``list_caption_methods()``): how a
captioner's decoder is tuned beside what every trained method trains (the new cross-attention, its layer norm
and the projection, ``caption.model``).

- ``untrained``: nothing trains; the model as built (fresh cross-attention), the baseline of the report.
- ``adapter``: a bottleneck adapter on each block's cross-attention output (down, GELU, up, residual);
  its up-projection starts at zero, so an untrained adapter is the identity.
- ``prefix``: ``prefix_length`` learned key/value vectors per layer, given to the self-attention as a
  key/value cache in front of the caption (prefix tuning). Written here rather than with peft's
  PrefixTuning so that the caption keeps positions 0.. (peft's prefix shifts GPT-2's positions by the
  prefix length, which overruns a small decoder's ``n_positions``) and so that masks are exact
  (``CaptionModel.new_cache`` and ``decoder_step`` read ``model.prefix``).
- ``lora``: LoRA on the self-attention projections ``attn.c_attn`` and ``attn.c_proj`` of every block,
  injected with peft (``inject_adapter_in_model``); B starts at zero, so an untrained LoRA is the identity.

A method is one function under ``@register_caption_method``: it adds its parts to a model whose decoder and
projection are built, drawing new weights from the model's seeded generator, and returns the parameters it
trains. The captioning config's method names (``model.method``, ``methods``) come from this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from fewclip.registry import Registry


class CaptionModelParts(Protocol):
    """What a method's ``build`` reads and sets on the captioner (``fewclip.caption.model.CaptionModel``, which
    builds itself with the registered methods, so this module cannot import it)."""

    decoder: Any  # the GPT-2 LMHeadModel (transformers)
    config: Any  # its CaptionModelConfig
    adapters: nn.ModuleList | None
    prefix: nn.Parameter | None


LORA_TARGETS = r".*\.attn\.(c_attn|c_proj)$"  # self-attention only: not crossattention.*, not mlp.c_proj
BASELINE = "untrained"  # the method that trains nothing: evaluated in every run, never listed in `methods`


@dataclass(frozen=True)
class CaptionMethod:
    """One way of tuning the decoder."""

    name: str
    build: Callable[[CaptionModelParts], list[nn.Parameter]]  # adds the method's parts; the parameters it trains
    model_keys: tuple[str, ...] = ()  # keys of the model block only this method reads: a change retrains it alone
    trains: bool = True  # False for the baseline: no weights are trained or saved


CAPTION_METHODS: Registry[CaptionMethod] = Registry("caption method")


def register_caption_method(
    name: str, model_keys: tuple[str, ...] = (), trains: bool = True
) -> Callable[[Callable[[CaptionModelParts], list[nn.Parameter]]], Any]:
    """Function decorator: register ``build`` as the caption method ``name``."""

    def register(
        build: Callable[[CaptionModelParts], list[nn.Parameter]],
    ) -> Callable[[CaptionModelParts], list[nn.Parameter]]:
        CAPTION_METHODS.register(name, CaptionMethod(name, build, model_keys, trains))
        return build

    return register


def list_caption_methods() -> list[str]:
    return CAPTION_METHODS.names()


def trained_methods() -> list[str]:
    """The methods a run may list in ``methods`` (the baseline is evaluated in every run anyway)."""
    return [name for name in CAPTION_METHODS.names() if CAPTION_METHODS.get(name).trains]


@register_caption_method(BASELINE, trains=False)
def untrained(model: CaptionModelParts) -> list[nn.Parameter]:
    return []


def adapter_width(n_embd: int, bottleneck: int | None) -> int:
    """The reference's n_embd/2 - 30, floored at n_embd/8 (a tiny decoder would get a negative width)."""
    return bottleneck if bottleneck is not None else max(n_embd // 2 - 30, max(n_embd // 8, 1))


class BottleneckAdapter(nn.Module):
    """x + up(GELU(down(x))), with ``up`` zero-initialised: the identity until trained."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


def _adapter_hook(adapter: BottleneckAdapter) -> Any:
    """A forward hook that passes a block's cross-attention output through its adapter."""

    def hook(_module: nn.Module, _args: Any, output: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
        return (adapter(output[0]),) + tuple(output[1:])

    return hook


@register_caption_method("adapter", model_keys=("adapter_bottleneck",))
def adapters(model: CaptionModelParts) -> list[nn.Parameter]:
    gpt = model.decoder.config
    width = adapter_width(gpt.n_embd, model.config.adapter_bottleneck)
    model.adapters = nn.ModuleList(BottleneckAdapter(gpt.n_embd, width) for _ in range(gpt.n_layer))
    for block, adapter in zip(model.decoder.transformer.h, model.adapters):
        block.crossattention.register_forward_hook(_adapter_hook(adapter))
    return list(model.adapters.parameters())


@register_caption_method("prefix", model_keys=("prefix_length",))
def prefix(model: CaptionModelParts) -> list[nn.Parameter]:
    gpt = model.decoder.config
    head_dim = gpt.n_embd // gpt.n_head  # (layer, key/value, head, prefix, head_dim)
    model.prefix = nn.Parameter(torch.randn(gpt.n_layer, 2, gpt.n_head, model.config.prefix_length, head_dim) * 0.02)
    return [model.prefix]


@register_caption_method("lora", model_keys=("lora_rank", "lora_alpha", "lora_dropout"))
def lora(model: CaptionModelParts) -> list[nn.Parameter]:
    # peft is imported when a LoRA captioner is built: importing it takes seconds (it loads transformers' model
    # code), which every other command, `fewclip --version` included, would pay at start
    from peft import LoraConfig, inject_adapter_in_model

    config = model.config
    settings = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=LORA_TARGETS,
        fan_in_fan_out=True,
    )  # GPT-2's Conv1D stores (in, out)
    inject_adapter_in_model(settings, model.decoder)
    return [param for name, param in model.decoder.named_parameters() if "lora_" in name]
