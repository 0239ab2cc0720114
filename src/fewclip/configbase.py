"""Base class for every config block: strict keys, validated on assignment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigBlock(BaseModel):
    """A typed config block. Unknown keys are an error (reported with the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
