"""The glimpse's recipe keys, derived from `GlimpseConfig`'s fields so that every field is settable and none drifts.

A field `vip_*` keeps its name; every other field `x` becomes `glimpse_x` (`layer` -> `glimpse_layer`,
`readout` -> `glimpse_readout`, `vision_feature_layers` -> `glimpse_vision_feature_layers`). Types, defaults and
help come from `GlimpseConfig`, and its own checks run when a recipe is parsed, naming the recipe key.
"""

from __future__ import annotations

import dataclasses
import typing

from ..models import GlimpseConfig


def recipe_key(name: str) -> str:
    """The recipe key of GlimpseConfig field `name`."""
    return name if name.startswith("vip_") else f"glimpse_{name}"


def _field(source: dataclasses.Field) -> dataclasses.Field:
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=source.metadata)
    return dataclasses.field(default=source.default, metadata=source.metadata)


def glimpse_config(self) -> GlimpseConfig:
    """The GlimpseConfig these recipe keys describe."""
    values = {f.name: getattr(self, recipe_key(f.name)) for f in dataclasses.fields(GlimpseConfig)}
    try:
        return GlimpseConfig(**values)
    except ValueError as err:  # its messages name its fields: name the recipe keys instead
        message = str(err)
        for f in dataclasses.fields(GlimpseConfig):
            message = message.replace(f"GlimpseConfig.{f.name}", recipe_key(f.name))
        raise ValueError(message) from None


def _post_init(self) -> None:
    self.glimpse_config()


_TYPES = typing.get_type_hints(GlimpseConfig)
GlimpseArguments = dataclasses.make_dataclass(
    "GlimpseArguments",
    [(recipe_key(f.name), _TYPES[f.name], _field(f)) for f in dataclasses.fields(GlimpseConfig)],
    namespace={"glimpse_config": glimpse_config, "__post_init__": _post_init, "__module__": __name__},
)
GlimpseArguments.__doc__ = "The glimpse token and VIP: one recipe key per GlimpseConfig field."
