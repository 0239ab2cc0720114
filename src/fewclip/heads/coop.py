"""CoOp (context optimisation): the `coop` config block.

The block is validated today so reference configs load unchanged; the head itself (learned context
through the frozen text tower) is the prompt-learning issue's work and registers here when it lands.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..configbase import ConfigBlock


class CoOpConfig(ConfigBlock):
    """The `coop` block, with the reference CoOp defaults."""

    n_ctx: int = Field(16, ge=1, description="Learnable context tokens (ignored when ctx_init is set).")
    ctx_init: str | None = Field(None, description="Words whose token embeddings initialise the context.")
    class_token_position: Literal["end", "middle", "front"] = "end"
    class_specific_context: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, gt=0)
