"""The glimpse's recipe keys: one per `GlimpseConfig` field, written out so that readers, IDEs and `--help-keys` see
them, with the default and help taken from that field (declared once, in `GlimpseConfig`).

A field `vip_*` keeps its name; every other field `x` becomes `glimpse_x` (`layer` -> `glimpse_layer`). A test checks
that the keys and their types match `GlimpseConfig`'s fields one for one. `GlimpseConfig`'s own checks run when a
recipe is parsed, naming the recipe key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from ...models import GlimpseConfig

_SOURCE = {f.name: f for f in dataclasses.fields(GlimpseConfig)}
APPLIED_ON_LOAD = ("threshold", "max_keep_ratio", "min_keep")
"""Fields that decide the keep mask from the VIP's scores; every other field shapes the VIP or what it reads, so it
is fixed once a glimpse is trained (a recipe with `glimpse_init` may set only these on top of the loaded glimpse)."""


def recipe_key(name: str) -> str:
    """The recipe key of GlimpseConfig field `name`."""
    return name if name.startswith("vip_") else f"glimpse_{name}"


def _key(name: str) -> dataclasses.Field:
    """A recipe key's field: default and help of GlimpseConfig field `name`."""
    source = _SOURCE[name]
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=source.metadata)
    return dataclasses.field(default=source.default, metadata=source.metadata)


@dataclass
class GlimpseArguments:
    """The glimpse token and VIP: one recipe key per GlimpseConfig field (help and defaults are GlimpseConfig's)."""

    glimpse_layer: int | None = _key("layer")
    glimpse_threshold: float = _key("threshold")
    glimpse_max_keep_ratio: float | None = _key("max_keep_ratio")
    glimpse_min_keep: int = _key("min_keep")
    glimpse_readout: Literal["logits", "log_softmax"] | None = _key("readout")
    glimpse_state_readout: Literal["glimpse", "last_prompt"] | None = _key("state_readout")
    vip_hidden_size: int = _key("vip_hidden_size")
    vip_intermediate_size: int = _key("vip_intermediate_size")
    vip_num_heads: int = _key("vip_num_heads")
    vip_num_blocks: int = _key("vip_num_blocks")
    glimpse_vision_feature_layers: list[int] | None = _key("vision_feature_layers")
    vip_rope_theta: float = _key("vip_rope_theta")
    vip_init_bias: float = _key("vip_init_bias")

    glimpse_keys_set: ClassVar[frozenset[str] | None] = None
    """The glimpse keys a parsed recipe or command line set (recorded by `check_loaded` when glimpse_init is given)."""

    def __post_init__(self) -> None:
        self.glimpse_config()

    def glimpse_config(self) -> GlimpseConfig:
        """The GlimpseConfig these recipe keys describe; its errors name the recipe keys."""
        try:
            return GlimpseConfig(**{name: getattr(self, recipe_key(name)) for name in _SOURCE})
        except ValueError as err:
            message = str(err)
            for name in _SOURCE:
                message = message.replace(f"GlimpseConfig.{name}", recipe_key(name))
            raise ValueError(message) from None

    def check_loaded(self, loaded: GlimpseConfig, explicit: set[str]) -> None:
        """With `glimpse_init`: record which glimpse keys the recipe or command line set (`explicit`), and refuse
        those other than APPLIED_ON_LOAD that disagree with the loaded glimpse (they cannot change a trained VIP)."""
        self.glimpse_keys_set = frozenset(explicit & {recipe_key(name) for name in _SOURCE})
        clashes = []
        for name in _SOURCE:
            key, value = recipe_key(name), getattr(loaded, name)
            if key in explicit and name not in APPLIED_ON_LOAD and getattr(self, key) != value:
                clashes.append(f"{key}={getattr(self, key)!r} (trained: {value!r})")
        if clashes:
            allowed = ", ".join(recipe_key(n) for n in APPLIED_ON_LOAD)
            raise ValueError(
                f"glimpse_init holds a trained glimpse, which these keys would change: {', '.join(clashes)}. Only "
                f"{allowed} apply on top of a loaded glimpse: remove the others, or train a new glimpse without "
                "glimpse_init."
            )

    def on_loaded(self, loaded: GlimpseConfig) -> GlimpseConfig:
        """The config a loaded glimpse (`glimpse_init`) runs with: its own, with the APPLIED_ON_LOAD keys the recipe
        set on top (keys set by parsing, see `check_loaded`; for arguments built in code, the keys that differ from
        GlimpseConfig's defaults)."""
        keys = self.glimpse_keys_set
        if keys is None:
            keys = {recipe_key(n) for n in APPLIED_ON_LOAD if getattr(self, recipe_key(n)) != _SOURCE[n].default}
        changes = {name: getattr(self, recipe_key(name)) for name in APPLIED_ON_LOAD if recipe_key(name) in keys}
        return dataclasses.replace(loaded, **changes)
