"""Base class for every config block: strict keys, validated on assignment."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict


class ConfigBlock(BaseModel):
    """A typed config block. Unknown keys are an error (reported with the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # key -> the key it follows (a prompt learner's n_ctx follows ctx_init): a variant that changes the source
    # and not the key lets the block resolve the key anew instead of keeping the base block's value
    derived_keys: ClassVar[dict[str, str]] = {}

    def key_values(self, class_names: Sequence[str]) -> dict[str, Any]:
        """What a trained unit's key hashes of this block, for a unit of ``class_names``: its values.

        A block whose new key leaves some units training exactly as before drops it here for them, so
        adding a key retrains only the units it changes."""
        return self.model_dump(mode="json")
