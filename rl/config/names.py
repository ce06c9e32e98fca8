"""Settings that a recipe, `glimpserl eval` and `glimpserl visualize` share, declared once.

Light on purpose (standard library only): the command line's `--help` is built from these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_MODEL = "builtin:tiny-qwen2_5_vl"
"""The base model when none is named (a random tiny Qwen2.5-VL, built offline)."""
DTYPES = ("float32", "bfloat16", "float16")
"""Dtypes a model can be saved in; loading also takes "auto" (the checkpoint's own)."""


@dataclass
class DtypeArguments:
    dtype: Literal[("auto", *DTYPES)] = field(
        default="float32",
        metadata={"help": "Dtype the base model is loaded in (bfloat16 on GPUs; auto: the checkpoint's own)."},
    )


@dataclass
class GenerationArguments:
    max_new_tokens: int = field(default=16, metadata={"help": "Greedy answer length limit (new tokens)."})


@dataclass
class GlimpseOverrides:
    """Changes to a trained glimpse's keep decision at inference (None: keep the glimpse's own setting)."""

    threshold: float | None = field(
        default=None,
        metadata={
            "help": "Keep threshold on sigmoid(VIP logit) instead of the glimpse's own (0.0 keeps every token)."
        },
    )
    max_keep_ratio: float | None = field(
        default=None,
        metadata={"help": "Cap on the kept fraction of each image's visual tokens instead of the glimpse's."},
    )

    def apply(self, config):
        """`config` (a GlimpseConfig) with the overrides that are set."""
        import dataclasses

        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(GlimpseOverrides)}
        return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
