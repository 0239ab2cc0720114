"""Base class for every config block: strict keys, validated on assignment."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class ConfigBlock(BaseModel):
    """A typed config block. Unknown keys are an error (reported with the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # key -> the key it follows (a prompt learner's n_ctx follows ctx_init): a variant that changes the source
    # and not the key lets the block resolve the key anew instead of keeping the base block's value
    derived_keys: ClassVar[dict[str, str]] = {}
