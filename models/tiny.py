"""Tiny random models with a working processor, built offline for any supported family (the family-agnostic entry).

Tests, the default demo and the CPU recipes need a whole model + processor pair without the model hub. Each family
folder builds its own in `models/<family>/tiny.py`; this module picks the family by its model type:

    from glimpserl.models.tiny import build_tiny_model, build_tiny_processor, save_tiny

    processor = build_tiny_processor("llava")      # default family: qwen2_5_vl
    model = build_tiny_model("llava", seed=0)      # fp32, ~1M params, token ids agree with the processor
    path = save_tiny("/tmp/tiny-llava", "llava")   # reloads with from_pretrained / AutoProcessor (offline)

The built-in model names `builtin:tiny-<model type>` load these (see `models.loading`).
"""

from __future__ import annotations

import pathlib

from .adapter import adapter_for_type, load_families, supported_model_types

# Qwen's tiny builders lived here before the family folders; their names stay importable from here.
from .qwen2_vl.tiny import (  # noqa: F401
    FAMILIES,
    TINY_SPECIAL_TOKENS,
    Qwen2VLImageOnlyProcessor,
    build_real_qwen_processor,
    build_tiny_tokenizer,
)

DEFAULT_FAMILY = "qwen2_5_vl"


def tiny_families() -> list[str]:
    """Model types with a tiny builder (every supported family has one)."""
    load_families()
    return supported_model_types()


def build_tiny_model(family: str = DEFAULT_FAMILY, seed: int = 0, **kwargs):
    """A tiny random-init model of `family` (a model type), identical for identical arguments; `kwargs` are the
    family builder's (e.g. text_layers, text_hidden, vocab_size, tokenizer)."""
    return adapter_for_type(family).build_tiny_model(seed=seed, **kwargs)


def build_tiny_processor(family: str = DEFAULT_FAMILY, **kwargs):
    """The processor of `family`'s tiny model; `kwargs` are the family builder's (e.g. min_pixels for Qwen)."""
    return adapter_for_type(family).build_tiny_processor(**kwargs)


def save_tiny(out_dir: str | pathlib.Path, family: str = DEFAULT_FAMILY, seed: int = 0, **kwargs) -> pathlib.Path:
    """Write a tiny model of `family` and its processor to `out_dir`; both reload offline with `from_pretrained`."""
    return adapter_for_type(family).save_tiny(pathlib.Path(out_dir), seed=seed, **kwargs)
