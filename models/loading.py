"""Load a base VLM and its processor by name: a local folder, a hub id, or a built-in tiny model."""

from __future__ import annotations

import torch

from . import tiny  # noqa: F401  (registers the image-only processor with AutoProcessor before any load)

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {
    "builtin:tiny-qwen2_5_vl": "qwen2_5_vl",
    "builtin:tiny-qwen2_vl": "qwen2_vl",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def load_processor(name: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """The processor for `name`; min/max_pixels bound the number of visual tokens per image."""
    from transformers import AutoProcessor

    if is_builtin(name):
        family = _builtin_family(name)
        kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        return tiny.build_tiny_processor(family, **kwargs)
    processor = AutoProcessor.from_pretrained(name)
    image_processor = processor.image_processor
    if min_pixels is not None:
        image_processor.min_pixels = min_pixels
        image_processor.size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        image_processor.max_pixels = max_pixels
        image_processor.size["longest_edge"] = max_pixels
    return processor


def load_model(name: str, dtype: str = "float32", attn_implementation: str | None = None, seed: int = 0):
    """The base model for `name` (no glimpse attached yet), in eval mode."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if is_builtin(name):
        model = tiny.build_tiny_model(
            _builtin_family(name), seed=seed, attn_implementation=attn_implementation or "sdpa"
        )
        return model.to(DTYPES[dtype] if dtype != "auto" else torch.float32).eval()
    from transformers import AutoModelForImageTextToText

    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForImageTextToText.from_pretrained(name, **kwargs).eval()


def _builtin_family(name: str) -> str:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"Unknown built-in model {name!r}; built-in models: {sorted(BUILTIN_MODELS)}.")
    return BUILTIN_MODELS[name]
