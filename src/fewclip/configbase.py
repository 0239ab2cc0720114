"""Base class for every config block: strict keys, validated on assignment, numbers that are numbers."""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


NUMBER_ERROR = "number_kind"  # a bool or a fraction given for a number; its context names the block's key


class ConfigBlock(BaseModel):
    """A typed config block. Unknown keys are an error (reported with the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # key -> the key it follows (a prompt learner's n_ctx follows ctx_init): a variant that changes the source
    # and not the key lets the block resolve the key anew instead of keeping the base block's value
    derived_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads `shots: [true]` as 1 shot and `epochs: 2.0` as 2 epochs: in every block
        # (heads' included), a count takes whole numbers only, and no number takes true/false. (A model
        # validator: pydantic refuses a field validator on every field, the sources' tag among them.)
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            problem = number_problem(field.annotation, value) if field is not None else None
            if isinstance(problem, str):
                raise PydanticCustomError(NUMBER_ERROR, "{problem}", {"key": name, "problem": problem})
        return data

    def key_values(self, class_names: Sequence[str]) -> dict[str, Any]:
        """What a trained unit's key hashes of this block, for a unit of ``class_names``: its values.

        A block whose new key leaves some units training exactly as before drops it here for them, so
        adding a key retrains only the units it changes."""
        return self.model_dump(mode="json")


def _shown(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def number_problem(annotation: Any, value: Any) -> str | bool | None:
    """Why ``value`` may not fill a field of type ``annotation``: a bool where a number goes, a float where an
    int goes (in lists, dict keys and values, unions too). True: it fits; None: not a number question (pydantic
    decides)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return number_problem(args[0], value)
    if annotation is int or annotation is float:
        if isinstance(value, bool):
            wanted = "a whole number such as 1" if annotation is int else "a number such as 0.5"
            return f"{_shown(value)} is a yes/no value, not a number: write {wanted}"
        if annotation is int and isinstance(value, float):
            hint = f"write {int(value)}" if value.is_integer() else "write a count such as 1, 2 or 16"
            return f"{value!r} is not a whole number (a count takes none after the point): {hint}"
        return True if isinstance(value, (int, float)) and (annotation is float or isinstance(value, int)) else None
    if annotation is bool or annotation is type(None):
        return True if isinstance(value, annotation) else None
    if origin in (typing.Union, types.UnionType):
        verdicts = [number_problem(member, value) for member in args]
        if True in verdicts:
            return True
        return next((v for v in verdicts if isinstance(v, str)), None)
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)):
        positional = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
        for index, item in enumerate(value):
            item_type = (args[index] if index < len(args) else None) if positional else (args[0] if args else None)
            verdict = number_problem(item_type, item) if item_type is not None else None
            if isinstance(verdict, str):
                return f"item {index + 1} of {_list_shown(value)}: {verdict}"
        return True
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        for key, item in value.items():
            for verdict in (number_problem(args[0], key), number_problem(args[1], item)):
                if isinstance(verdict, str):
                    return f"entry {_shown(key)}: {_shown(item)}: {verdict}"
        return True
    return None


def _list_shown(value: Sequence[Any]) -> str:
    return "[" + ", ".join(_shown(item) for item in value) + "]"
