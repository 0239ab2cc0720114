"""The data-source registry (``SOURCES``, ``list_sources()``) and ``@register_source``, put above each source's class.

A source is one file: its config block (a ``SourceConfig`` whose ``source: Literal["name"] = "name"`` key names the
source) and the class that lists its images, whose ``Config`` is that block. Registering it is all it takes: the
``dataset`` config block is the union of the registered sources' blocks (``dataset_config()``), so the source is a
valid ``dataset.source`` and ``dataset.eval_on`` target, and ``build_source`` finds its class. The package's
``__init__`` imports the built-in source modules, which fills the registry in import order.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import Field

from fewclip.data.sources.base import Source, SourceConfig
from fewclip.registry import Registry

SOURCES: Registry[Any] = Registry("data source")  # source classes, each with its config block as `Config`

SourceClass = TypeVar("SourceClass", bound=type)


def source_name(config_cls: type[SourceConfig]) -> str:
    """The name a source config declares in its ``source`` key; a TypeError saying how to declare it otherwise."""
    field = config_cls.model_fields.get("source")
    values = typing.get_args(field.annotation) if field is not None else ()
    if (
        field is None
        or typing.get_origin(field.annotation) is not Literal
        or len(values) != 1
        or field.default != values[0]
    ):
        raise TypeError(
            f"{config_cls.__qualname__}: a source config names its source in one key, "
            '`source: Literal["<name>"] = "<name>"`'
        )
    return str(values[0])


def register_source(source_cls: SourceClass) -> SourceClass:
    """Class decorator: add ``source_cls`` to ``SOURCES`` under its ``Config``'s source name, and let every source's
    ``eval_on`` take it as a target."""
    config_cls = getattr(source_cls, "Config", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, SourceConfig)):
        raise TypeError(
            f"{source_cls.__qualname__}: set `Config` to the source's config block (a SourceConfig "
            "subclass) before registering it"
        )
    SOURCES.register(source_name(config_cls), source_cls)
    rebuild_source_configs()
    return source_cls


def dataset_config() -> Any:
    """The ``dataset`` block's type: the registered sources' config blocks, the ``source`` key choosing one."""
    configs = tuple(SOURCES.get(name).Config for name in SOURCES)
    if len(configs) == 1:  # a one-member union is its member; a discriminator needs two
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="source")]


def rebuild_source_configs() -> None:
    """Type every source config's ``eval_on`` (a list of dataset blocks) as a list of the registered sources' blocks.

    pydantic resolves a field's type once; a source registered later changes it, so the field is given its new type
    and the class rebuilt (``model_rebuild(force=True)`` after editing ``model_fields``, as pydantic prescribes)."""
    union = dataset_config()
    for config_cls in (SourceConfig, *(SOURCES.get(name).Config for name in SOURCES)):
        config_cls.model_fields["eval_on"].annotation = list[union]  # type: ignore[valid-type]
        # a class built for the first time resolves the field's own annotation, list["DatasetConfig"]
        config_cls.model_rebuild(force=True, _types_namespace={"DatasetConfig": union})


def list_sources() -> list[str]:
    return SOURCES.names()


def build_source(config: SourceConfig) -> Source:
    """The source that reads ``config``'s images (the class registered under its ``source``)."""
    source: Source = SOURCES.get(config.source)(config)  # type: ignore[attr-defined]  # each block declares `source`
    return source
